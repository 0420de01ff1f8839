//! Nemeses: the faults, scheduled from the seed, injected and healed by the runner.
//!
//! A [`Fault`] is one concrete fault (which family, which targets are chosen when it starts);
//! [`Nemesis`] injects it, keeps what is needed to heal it, and records its window (start, end,
//! description) on the run's clock for the report and the plot.
//!
//! | family | faults |
//! |---|---|
//! | partition | isolate a random node, isolate the leader, bridge (n_a-n_b cut, both reach n_c), one-way ring |
//! | kill | kill -9 the leader / a random node; SIGTERM the leader (a clean stop, which hands its leadership over first) / a random node; restart it at heal |
//! | pause | SIGSTOP the leader / a random node, SIGCONT at heal |
//! | loss | drop a percentage of node-to-node packets (nft numgen) |
//! | transfer-storm | Maintenance.MoveLeader to a random other node, again and again |
//!
//! Adding a family (membership: MemberRemove of a node + MemberAdd and a restart with
//! `--initial-cluster-state existing` at heal, once the membership issue lands) means: a variant
//! in [`Family`] and [`Fault`], its arm in `inject` (returning what heal needs in [`Active`]) and
//! its arm in `heal`. The scheduler, the report and the plot need nothing more.
//!
//! Must never: leave a fault in place at the end (`heal_everything` runs whatever happened).

use std::time::Duration;

use quorumdb::pb::etcdserverpb::MoveLeaderRequest;
use quorumdb::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use serde::Serialize;

use crate::cluster;
use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::net::NetFaults;
use crate::net::Topology;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Partition,
    Kill,
    Pause,
    Loss,
    TransferStorm,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Partition,
        Family::Kill,
        Family::Pause,
        Family::Loss,
        Family::TransferStorm,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    IsolateRandom,
    IsolateLeader,
    Bridge,
    Ring,
    KillRandom,
    KillLeader,
    StopLeader,
    StopRandom,
    PauseRandom,
    PauseLeader,
    Loss,
    TransferStorm,
}

impl Fault {
    pub fn family(self) -> Family {
        match self {
            Fault::IsolateRandom | Fault::IsolateLeader | Fault::Bridge | Fault::Ring => {
                Family::Partition
            }
            Fault::KillRandom | Fault::KillLeader | Fault::StopLeader | Fault::StopRandom => {
                Family::Kill
            }
            Fault::PauseRandom | Fault::PauseLeader => Family::Pause,
            Fault::Loss => Family::Loss,
            Fault::TransferStorm => Family::TransferStorm,
        }
    }

    pub const ALL: [Fault; 12] = [
        Fault::IsolateRandom,
        Fault::IsolateLeader,
        Fault::Bridge,
        Fault::Ring,
        Fault::KillRandom,
        Fault::KillLeader,
        Fault::StopLeader,
        Fault::StopRandom,
        Fault::PauseRandom,
        Fault::PauseLeader,
        Fault::Loss,
        Fault::TransferStorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::IsolateRandom => "isolate-random",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Bridge => "bridge",
            Fault::Ring => "one-way-ring",
            Fault::KillRandom => "kill-random",
            Fault::KillLeader => "kill-leader",
            Fault::StopLeader => "stop-leader",
            Fault::StopRandom => "stop-random",
            Fault::PauseRandom => "pause-random",
            Fault::PauseLeader => "pause-leader",
            Fault::Loss => "packet-loss",
            Fault::TransferStorm => "transfer-storm",
        }
    }
}

/// How long a node stopped with SIGTERM may take to exit: its client drain (the request
/// timeout, 7 s) with room to spare; a node still running then is a finding.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// One planned fault: when it starts (seconds after the workloads start) and how long it lasts.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub fault: Fault,
    pub start_s: f64,
    pub duration_s: f64,
}

/// The CI schedule: every fault once, in a seeded order, `fault_s` each with `quiet_s` of calm
/// after it (time for a new leader and for the clients to see a healthy cluster again).
pub fn every_fault_once(
    rng: &mut Rng,
    lead_in_s: f64,
    fault_s: f64,
    quiet_s: f64,
    families: &[Family],
) -> Vec<Planned> {
    let mut faults: Vec<Fault> = Fault::ALL
        .iter()
        .copied()
        .filter(|f| families.contains(&f.family()))
        .collect();
    rng.shuffle(&mut faults);
    let mut at = lead_in_s;
    faults
        .into_iter()
        .map(|fault| {
            let planned = Planned {
                fault,
                start_s: at,
                duration_s: fault_s,
            };
            at += fault_s + quiet_s;
            planned
        })
        .collect()
}

/// The long schedule: random faults from the chosen families until `time_limit_s`.
pub fn random_until(
    rng: &mut Rng,
    lead_in_s: f64,
    time_limit_s: f64,
    families: &[Family],
) -> Vec<Planned> {
    let faults: Vec<Fault> = Fault::ALL
        .iter()
        .copied()
        .filter(|f| families.contains(&f.family()))
        .collect();
    let mut plan = Vec::new();
    let mut at = lead_in_s;
    loop {
        let duration_s = 4.0 + rng.below(12) as f64;
        if faults.is_empty() || at + duration_s > time_limit_s {
            return plan;
        }
        let fault = faults[rng.index(faults.len())];
        plan.push(Planned {
            fault,
            start_s: at,
            duration_s,
        });
        at += duration_s + 3.0 + rng.below(8) as f64;
    }
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub fault: Fault,
    /// The label on the plot and in the report (the fault's name, or `self-test`).
    pub name: String,
    pub description: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What heal needs to undo an injected fault.
struct Active {
    fault: Fault,
    description: String,
    start_ns: u64,
    targets: Vec<usize>,
}

pub struct Nemesis<'a> {
    topology: &'a Topology,
    pub cluster: Cluster,
    ids: Vec<u64>,
    rng: Rng,
    recorder: Recorder,
    active: Option<Active>,
    pub windows: Vec<Window>,
    /// Nodes that died although nobody killed them: a finding, reported as such.
    pub crashes: Vec<String>,
    pub loss_percent: u8,
}

impl<'a> Nemesis<'a> {
    pub fn new(
        topology: &'a Topology,
        cluster: Cluster,
        seed: u64,
        recorder: Recorder,
    ) -> Nemesis<'a> {
        let ids = cluster.nodes.iter().map(|n| n.id).collect();
        Nemesis {
            topology,
            cluster,
            ids,
            rng: Rng::fork(seed, 1),
            recorder,
            active: None,
            windows: Vec::new(),
            crashes: Vec::new(),
            loss_percent: 30,
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.ids.clone()
    }

    async fn leader_or_random(&mut self) -> (usize, &'static str) {
        match cluster::agreed_leader(&self.ids).await {
            Some(leader) => (leader, "leader"),
            None => (
                self.rng.index(self.cluster.len()),
                "no agreed leader; random",
            ),
        }
    }

    /// The node a fault aimed at one node hits, and how it was chosen: the leader (random when
    /// none is agreed) for the faults aimed at it, else a random node.
    async fn target(&mut self, at_leader: bool) -> (usize, &'static str) {
        if at_leader {
            self.leader_or_random().await
        } else {
            (self.rng.index(self.cluster.len()), "random")
        }
    }

    fn name(&self, index: usize) -> String {
        self.cluster.nodes[index].name.clone()
    }

    /// Injects `fault`; for a transfer storm, keeps moving the leader for `duration`.
    pub async fn inject(&mut self, fault: Fault, duration: Duration) -> Result<(), String> {
        self.check_crashes();
        let n = self.cluster.len();
        let start_ns = self.recorder.now_ns();
        let (description, targets) = match fault {
            Fault::IsolateRandom | Fault::IsolateLeader => {
                let (target, how) = self.target(fault == Fault::IsolateLeader).await;
                let others: Vec<usize> = (0..n).filter(|i| *i != target).collect();
                let mut faults = NetFaults::default();
                faults.cut_between(&[target], &others);
                self.topology.apply(&faults)?;
                (format!("isolated {} ({how})", self.name(target)), vec![])
            }
            Fault::Bridge => {
                let mut order: Vec<usize> = (0..n).collect();
                self.rng.shuffle(&mut order);
                let (a, b, middle) = (order[0], order[1], order[2]);
                let mut faults = NetFaults::default();
                faults.cut_between(&[a], &[b]);
                self.topology.apply(&faults)?;
                (
                    format!(
                        "bridge: {}-{} cut, both reach {}",
                        self.name(a),
                        self.name(b),
                        self.name(middle)
                    ),
                    vec![],
                )
            }
            Fault::Ring => {
                let mut faults = NetFaults::default();
                for i in 0..n {
                    faults.cut.insert((i, (i + 1) % n));
                }
                self.topology.apply(&faults)?;
                let arrows: Vec<String> = (0..n)
                    .map(|i| format!("{}-/->{}", self.name(i), self.name((i + 1) % n)))
                    .collect();
                (format!("one-way ring: {}", arrows.join(" ")), vec![])
            }
            Fault::KillRandom | Fault::KillLeader => {
                let (target, how) = self.target(fault == Fault::KillLeader).await;
                self.cluster.kill(target);
                (
                    format!("kill -9 {} ({how})", self.name(target)),
                    vec![target],
                )
            }
            Fault::StopLeader | Fault::StopRandom => {
                let (target, how) = self.target(fault == Fault::StopLeader).await;
                let stopped = self.cluster.terminate(target, STOP_WAIT).await;
                let outcome = match stopped {
                    Ok(how_it_went) => how_it_went,
                    Err(finding) => {
                        eprintln!("jepsen: FINDING: {finding}");
                        self.crashes.push(finding.clone());
                        finding
                    }
                };
                (
                    format!("SIGTERM {} ({how}): {outcome}", self.name(target)),
                    vec![target],
                )
            }
            Fault::PauseRandom | Fault::PauseLeader => {
                let (target, how) = self.target(fault == Fault::PauseLeader).await;
                self.cluster.pause(target)?;
                (
                    format!("SIGSTOP {} ({how})", self.name(target)),
                    vec![target],
                )
            }
            Fault::Loss => {
                let faults = NetFaults {
                    loss_percent: self.loss_percent,
                    ..NetFaults::default()
                };
                self.topology.apply(&faults)?;
                (
                    format!("{}% packet loss between nodes", self.loss_percent),
                    vec![],
                )
            }
            Fault::TransferStorm => {
                let moves = self.transfer_storm(duration).await;
                (format!("leader transfer storm: {moves}"), vec![])
            }
        };
        eprintln!(
            "jepsen: {:>7.1}s fault {}: {description}",
            start_ns as f64 / 1e9,
            fault.name()
        );
        self.active = Some(Active {
            fault,
            description,
            start_ns,
            targets,
        });
        Ok(())
    }

    /// Moves the leader to a random other node every ~800 ms for `duration` (bounded).
    async fn transfer_storm(&mut self, duration: Duration) -> String {
        let deadline = tokio::time::Instant::now() + duration;
        let (mut ok, mut refused) = (0, 0);
        while tokio::time::Instant::now() < deadline {
            if let Some(leader) = cluster::agreed_leader(&self.ids).await {
                let others: Vec<usize> = (0..self.cluster.len()).filter(|i| *i != leader).collect();
                let target = others[self.rng.index(others.len())];
                let mut client =
                    MaintenanceClient::new(cluster::channel(leader, Duration::from_secs(3)));
                match client
                    .move_leader(MoveLeaderRequest {
                        target_id: self.ids[target],
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        format!("{ok} moves answered ok, {refused} refused or timed out")
    }

    /// Undoes the active fault, if any, and closes its window.
    pub async fn heal(&mut self) -> Result<(), String> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        match active.fault.family() {
            Family::Partition | Family::Loss => self.topology.apply(&NetFaults::default())?,
            Family::Kill => {
                for target in &active.targets {
                    self.cluster.start(*target)?;
                }
            }
            Family::Pause => {
                for target in &active.targets {
                    self.cluster.resume(*target)?;
                }
            }
            Family::TransferStorm => {}
        }
        let end_ns = self.recorder.now_ns();
        eprintln!(
            "jepsen: {:>7.1}s healed {}",
            end_ns as f64 / 1e9,
            active.fault.name()
        );
        self.windows.push(Window {
            fault: active.fault,
            name: active.fault.name().to_string(),
            description: active.description,
            start_ns: active.start_ns,
            end_ns,
        });
        self.check_crashes();
        Ok(())
    }

    /// Heals whatever is active, clears the network, resumes and restarts every node.
    pub async fn heal_everything(&mut self) -> Result<(), String> {
        let healed = self.heal().await;
        self.topology.apply(&NetFaults::default())?;
        for index in 0..self.cluster.len() {
            self.cluster.resume(index)?;
            self.cluster.start(index)?;
        }
        healed
    }

    /// Records nodes that exited on their own, and starts them again so the run goes on.
    pub fn check_crashes(&mut self) {
        for exit in self.cluster.unexpected_exits() {
            eprintln!("jepsen: FINDING: {exit}");
            self.crashes.push(exit);
        }
        for index in 0..self.cluster.len() {
            let killed_on_purpose = self
                .active
                .as_ref()
                .is_some_and(|a| a.fault.family() == Family::Kill && a.targets.contains(&index));
            if !self.cluster.is_running(index) && !killed_on_purpose {
                let _ = self.cluster.start(index);
            }
        }
    }
}
