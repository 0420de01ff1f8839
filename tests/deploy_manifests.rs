//! The deployment files in `deploy/` are consistent with the binary they deploy.
//!
//! No Kubernetes cluster or systemd runs here (and the Compose file runs for real only in
//! `scripts/compose-test.sh`), so these tests check what can be checked without one: every YAML
//! document parses and has the fields its kind needs, the pieces refer to each other correctly
//! (selectors, service names, volumes, config maps), and, most useful, each member's settings,
//! assembled the way the container or unit assembles them (config file + `QUORUMDB_*`
//! environment), pass the server's own validation (`ServerArgs::into_config`): a typo in a key,
//! a name missing from the initial cluster or a peer URL that does not match fails here.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

use clap::Parser;
use quorumdb::config::NodeConfig;
use quorumdb::config::ServerArgs;
use yaml_rust2::Yaml;
use yaml_rust2::YamlLoader;

fn deploy_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = deploy_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `${NAME:-default}` and `${NAME-default}` replaced by their defaults, as Compose does with an
/// empty environment.
fn with_default_variables(text: &str) -> String {
    let mut result = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        result.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let expression = &rest[start + 2..end];
        let default = expression
            .split_once(":-")
            .or_else(|| expression.split_once('-'))
            .map_or("", |(_, default)| default);
        result.push_str(default);
        rest = &rest[end + 1..];
    }
    result.push_str(rest);
    result
}

/// Every document of a YAML file, with `<<` merge keys applied and `${...}` variables at their
/// defaults (as Compose does).
fn yaml_documents(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&with_default_variables(&read(relative)))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
        .into_iter()
        .map(apply_merge_keys)
        .collect()
}

fn apply_merge_keys(value: Yaml) -> Yaml {
    match value {
        Yaml::Hash(hash) => {
            let merge_key = Yaml::String("<<".into());
            let mut merged = yaml_rust2::yaml::Hash::new();
            for (key, value) in hash.iter().filter(|(key, _)| **key != merge_key) {
                merged.insert(key.clone(), apply_merge_keys(value.clone()));
            }
            if let Some(Yaml::Hash(base)) = hash.get(&merge_key).cloned().map(apply_merge_keys) {
                for (key, value) in base {
                    merged.entry(key).or_insert(value);
                }
            }
            Yaml::Hash(merged)
        }
        Yaml::Array(items) => Yaml::Array(items.into_iter().map(apply_merge_keys).collect()),
        other => other,
    }
}

fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} must be a string, found {value:?}"))
}

/// A scalar as the environment sees it (Compose and Kubernetes accept numbers and booleans).
fn scalar(value: &Yaml, what: &str) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{what} must be a scalar, found {other:?}"),
    }
}

fn strings(value: &Yaml, what: &str) -> Vec<String> {
    value
        .as_vec()
        .unwrap_or_else(|| panic!("{what} must be a list, found {value:?}"))
        .iter()
        .map(|item| scalar(item, what))
        .collect()
}

#[derive(Parser)]
struct Server {
    #[command(flatten)]
    args: ServerArgs,
}

/// The configuration `quorumdb server` would run with, given a config file's text and the
/// `QUORUMDB_*` environment (which overrides the file, as in the binary). The environment goes
/// in as the equivalent flags, so an unknown variable is an error here rather than ignored.
fn server_config(file_text: &str, environment: &BTreeMap<String, String>) -> NodeConfig {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quorumdb.toml");
    std::fs::write(&file, file_text).unwrap();
    let mut argv = vec!["quorumdb".to_string()];
    for (key, value) in environment {
        let Some(flag) = key.strip_prefix("QUORUMDB_") else {
            continue;
        };
        // The log filter and the config file's in-container path are not settings to check.
        if flag == "LOG" || flag == "CONFIG_FILE" {
            continue;
        }
        argv.push(format!("--{}", flag.to_lowercase().replace('_', "-")));
        argv.push(value.clone());
    }
    argv.push("--config-file".into());
    argv.push(file.display().to_string());
    let server = Server::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    server
        .args
        .into_config()
        .unwrap_or_else(|e| panic!("{environment:?}: {e}"))
}

fn member_names(config: &NodeConfig) -> BTreeSet<String> {
    config
        .initial_cluster
        .values()
        .map(|member| member.name.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn kubernetes_objects() -> Vec<(String, Yaml)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_path("k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/k8s holds no manifests");
    let mut objects = Vec::new();
    for path in files {
        let relative = format!("k8s/{}", path.file_name().unwrap().to_string_lossy());
        for (index, document) in yaml_documents(&relative).into_iter().enumerate() {
            let at = format!("{relative} document {index}");
            for field in ["apiVersion", "kind"] {
                text(&document[field], &format!("{at}: {field}"));
            }
            text(
                &document["metadata"]["name"],
                &format!("{at}: metadata.name"),
            );
            objects.push((at, document));
        }
    }
    objects
}

fn the_object<'a>(objects: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects
        .iter()
        .map(|(_, object)| object)
        .filter(|object| object["kind"].as_str() == Some(kind))
        .filter(|object| object["metadata"]["name"].as_str() == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} named {name}");
    found[0]
}

fn only_of_kind<'a>(objects: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects
        .iter()
        .map(|(_, object)| object)
        .filter(|object| object["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

/// Whether a label selector (`matchLabels`, or a Service's plain map) selects these labels.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let selector = selector
        .as_hash()
        .unwrap_or_else(|| panic!("a selector must be a map, found {selector:?}"));
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels[text(key, "label")] == *value)
}

/// `$(VAR)` references in a container's environment, expanded as the kubelet does.
fn expand(value: &str, variables: &BTreeMap<String, String>) -> String {
    let mut expanded = value.to_string();
    for (name, replacement) in variables {
        expanded = expanded.replace(&format!("$({name})"), replacement);
    }
    assert!(
        !expanded.contains("$("),
        "unresolved reference in {value:?}"
    );
    expanded
}

#[test]
fn every_kubernetes_document_parses_with_api_version_kind_and_name() {
    let objects = kubernetes_objects();
    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|(_, object)| object["kind"].as_str().unwrap())
        .collect();
    for kind in ["StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s ({kinds:?})");
    }
}

#[test]
fn the_statefulset_runs_three_members_that_find_each_other_by_their_dns_names() {
    let objects = kubernetes_objects();
    let set = only_of_kind(&objects, "StatefulSet");
    let set_name = text(&set["metadata"]["name"], "StatefulSet name");
    let spec = &set["spec"];
    let replicas = spec["replicas"].as_i64().expect("spec.replicas");
    assert_eq!(replicas, 3, "three members (no membership changes yet)");
    assert_eq!(
        spec["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "members must start together: none is ready before a quorum is"
    );
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(selects(&spec["selector"]["matchLabels"], pod_labels));

    // Peers: a headless Service, named by the StatefulSet, publishing not-ready pods.
    let peer_service_name = text(&spec["serviceName"], "spec.serviceName");
    let peer_service = the_object(&objects, "Service", peer_service_name);
    assert_eq!(peer_service["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        peer_service["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert!(selects(&peer_service["spec"]["selector"], pod_labels));

    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // Probes: readiness is /readyz (needs a quorum), liveness /livez (must not), both on the
    // metrics port, which the ConfigMap must make the node serve.
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
        ("startupProbe", "/livez"),
    ] {
        let http = &container[probe]["httpGet"];
        assert_eq!(text(&http["path"], probe), path, "{probe} path");
        assert_eq!(text(&http["port"], probe), "metrics", "{probe} port");
    }
    for resource in ["cpu", "memory"] {
        assert!(
            !container["resources"]["requests"][resource].is_badvalue(),
            "resources.requests.{resource}"
        );
    }

    // Ports by name: the Services target them.
    let port_names: BTreeMap<String, i64> = container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .map(|port| {
            (
                text(&port["name"], "port name").to_string(),
                port["containerPort"].as_i64().expect("containerPort"),
            )
        })
        .collect();
    let client_service = the_object(&objects, "Service", set_name);
    assert!(selects(&client_service["spec"]["selector"], pod_labels));
    for service in [client_service, peer_service] {
        for port in service["spec"]["ports"].as_vec().expect("service ports") {
            let target = text(&port["targetPort"], "targetPort");
            assert!(
                port_names.contains_key(target),
                "no container port {target}"
            );
        }
    }

    // Volumes: data from the claim template, config from the ConfigMap.
    let mounts: BTreeMap<String, String> = container["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|mount| {
            (
                text(&mount["name"], "mount name").to_string(),
                text(&mount["mountPath"], "mountPath").to_string(),
            )
        })
        .collect();
    let claims: Vec<&str> = spec["volumeClaimTemplates"]
        .as_vec()
        .expect("volumeClaimTemplates")
        .iter()
        .map(|claim| text(&claim["metadata"]["name"], "claim name"))
        .collect();
    assert_eq!(claims.len(), 1);
    let data_mount = mounts.get(claims[0]).expect("the claim is mounted");
    let config_volume = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .find(|volume| !volume["configMap"].is_badvalue())
        .expect("a ConfigMap volume");
    let config_mount = mounts
        .get(text(&config_volume["name"], "volume name"))
        .expect("the ConfigMap is mounted");
    let config_map = the_object(
        &objects,
        "ConfigMap",
        text(&config_volume["configMap"]["name"], "configMap name"),
    );

    // Every pod's settings, as the kubelet and the server assemble them.
    let mut clusters = BTreeSet::new();
    for ordinal in 0..replicas {
        let pod_name = format!("{set_name}-{ordinal}");
        let mut variables = BTreeMap::from([
            ("POD_NAME".to_string(), pod_name.clone()),
            ("POD_NAMESPACE".to_string(), "databases".to_string()),
        ]);
        let mut environment = BTreeMap::new();
        for variable in container["env"].as_vec().expect("env") {
            let name = text(&variable["name"], "env name").to_string();
            if variable["value"].is_badvalue() {
                continue; // valueFrom: the downward API, set above.
            }
            let value = expand(&scalar(&variable["value"], &name), &variables);
            variables.insert(name.clone(), value.clone());
            environment.insert(name, value);
        }
        let config_file = environment
            .get("QUORUMDB_CONFIG_FILE")
            .expect("QUORUMDB_CONFIG_FILE");
        let (directory, file_name) = config_file.rsplit_once('/').unwrap();
        assert_eq!(directory, config_mount, "the config file is in the mount");
        let file_text = text(&config_map["data"][file_name], "ConfigMap data");
        let config = server_config(file_text, &environment);
        assert_eq!(config.name, pod_name);
        assert_eq!(&config.data_dir.display().to_string(), data_mount);
        // The HTTP probes reach what the node serves.
        let metrics_port = port_names.get("metrics").expect("a metrics container port");
        assert!(
            config
                .listen_metrics_urls
                .iter()
                .any(|url| url.ends_with(&format!(":{metrics_port}"))),
            "the node serves /readyz and /livez on the probed port: {:?}",
            config.listen_metrics_urls
        );
        assert!(
            config
                .advertise_peer_url
                .contains(&format!("{pod_name}.{peer_service_name}.databases.svc")),
            "{}",
            config.advertise_peer_url
        );
        let expected_members: BTreeSet<String> =
            (0..replicas).map(|i| format!("{set_name}-{i}")).collect();
        assert_eq!(member_names(&config), expected_members);
        clusters.insert(format!("{:?}", config.initial_cluster));
    }
    assert_eq!(
        clusters.len(),
        1,
        "every pod must get the same initial cluster"
    );
}

#[test]
fn the_disruption_budget_lets_one_member_go_at_a_time() {
    let objects = kubernetes_objects();
    let budget = only_of_kind(&objects, "PodDisruptionBudget");
    assert_eq!(budget["apiVersion"].as_str(), Some("policy/v1"));
    assert_eq!(budget["spec"]["maxUnavailable"].as_i64(), Some(1));
    let set = only_of_kind(&objects, "StatefulSet");
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        &set["spec"]["template"]["metadata"]["labels"]
    ));
}

// ---------------------------------------------------------------------------------------------
// Docker image and Compose

#[test]
fn the_image_default_config_runs_a_single_node_with_data_in_the_volume() {
    let config = server_config(&read("docker/quorumdb.toml"), &BTreeMap::new());
    assert_eq!(config.initial_cluster.len(), 1);
    assert_eq!(config.data_dir, PathBuf::from("/data"));
    let dockerfile = read("docker/Dockerfile");
    assert!(dockerfile.lines().any(|line| line.trim() == "FROM scratch"));
    assert!(dockerfile.contains(r#"VOLUME ["/data"]"#));
    assert!(dockerfile.contains("ENV QUORUMDB_CONFIG_FILE=/etc/quorumdb/quorumdb.toml"));
}

#[test]
fn the_compose_members_form_one_cluster_with_distinct_ports_and_volumes() {
    let documents = yaml_documents("compose/docker-compose.yml");
    assert_eq!(documents.len(), 1);
    let compose = &documents[0];
    let image_config = read("docker/quorumdb.toml");
    let services = compose["services"].as_hash().expect("services");
    assert_eq!(services.len(), 3);
    let declared_volumes = compose["volumes"].as_hash().expect("volumes");
    let declared_networks = compose["networks"].as_hash().expect("networks");

    let mut clusters = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut members = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    for (service_name, service) in services {
        let service_name = text(service_name, "service name");
        let environment: BTreeMap<String, String> = service["environment"]
            .as_hash()
            .unwrap_or_else(|| panic!("{service_name}: environment must be a map"))
            .iter()
            .map(|(key, value)| (text(key, "variable").to_string(), scalar(value, "value")))
            .collect();
        let config = server_config(&image_config, &environment);
        assert_eq!(config.name, service_name, "member named like its service");
        // Peers reach each other by service name on the private network.
        assert_eq!(
            config.advertise_peer_url,
            format!("http://{service_name}:2380")
        );
        names.insert(config.name.clone());
        clusters.insert(format!("{:?}", config.initial_cluster));
        members = member_names(&config);

        let health = strings(&service["healthcheck"]["test"], "healthcheck.test");
        assert_eq!(health[..3], ["CMD", "/quorumdb", "probe"]);
        assert!(!text(&service["restart"], "restart").is_empty());
        for network in service["networks"].as_vec().expect("networks") {
            assert!(declared_networks.contains_key(network));
        }

        let ports = strings(&service["ports"], "ports");
        assert_eq!(ports.len(), 1, "{service_name}: only the client port");
        let (host, container_port) = ports[0].rsplit_once(':').unwrap();
        assert_eq!(container_port, "2379");
        assert!(
            host.starts_with("127.0.0.1:"),
            "{service_name}: loopback only"
        );
        assert!(
            host_ports.insert(host.to_string()),
            "{host} published twice"
        );
        // Clients on the host that discover members must be sent to the published port.
        assert_eq!(config.advertise_client_url, format!("http://{host}"));

        let mounts = strings(&service["volumes"], "volumes");
        let (volume, target) = mounts[0].split_once(':').unwrap();
        assert_eq!(PathBuf::from(target), config.data_dir);
        assert!(declared_volumes.contains_key(&Yaml::String(volume.into())));
        assert!(volumes.insert(volume.to_string()), "{volume} shared");
    }
    assert_eq!(clusters.len(), 1, "every member must get the same cluster");
    assert_eq!(
        members, names,
        "the initial cluster is exactly the services"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `Key=Value` lines of a unit or environment file, comments and sections skipped.
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {line:?}"));
            (key.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened_and_writes_only_the_data_directory() {
    let unit = assignments(&read("systemd/quorumdb.service"));
    let value = |key: &str| {
        unit.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("quorumdb.service has no {key}="))
    };
    assert_eq!(value("User"), "quorumdb");
    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        // The filter forbids the server's own sched_setscheduler: systemd sets its default.
        ("CPUSchedulingPolicy", "batch"),
    ] {
        assert_eq!(value(key), expected, "{key}");
    }
    let config = read("systemd/quorumdb.toml");
    let environment: BTreeMap<String, String> = assignments(&read("systemd/node1.env"))
        .into_iter()
        .collect();
    let data_dir = server_config(&config, &environment).data_dir;
    assert_eq!(PathBuf::from(value("ReadWritePaths")), data_dir);
    assert_eq!(
        PathBuf::from("/var/lib").join(value("StateDirectory")),
        data_dir
    );
    assert!(value("ExecStart").contains("--config-file /etc/quorumdb/quorumdb.toml"));
    assert_eq!(value("EnvironmentFile"), "/etc/quorumdb/quorumdb.env");
}

#[test]
fn each_systemd_node_example_is_a_valid_member_of_the_same_cluster() {
    let config = read("systemd/quorumdb.toml");
    let mut names = BTreeSet::new();
    for node in 1..=3 {
        let environment: BTreeMap<String, String> =
            assignments(&read(&format!("systemd/node{node}.env")))
                .into_iter()
                .collect();
        let member = server_config(&config, &environment);
        // `quorumdb probe` without arguments checks http://127.0.0.1:2379.
        assert!(
            member
                .listen_client_urls
                .contains(&"http://127.0.0.1:2379".to_string()),
            "node{node}: {:?}",
            member.listen_client_urls
        );
        assert_eq!(member_names(&member).len(), 3);
        names.insert(member.name);
    }
    assert_eq!(names.len(), 3, "three distinct members");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_where_installed() {
    let probe = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if !probe.is_ok_and(|output| output.status.success()) {
        eprintln!("systemd-analyze is not installed: unit not verified");
        return;
    }
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = read("systemd/quorumdb.service")
        .replace("/usr/local/bin/quorumdb", env!("CARGO_BIN_EXE_quorumdb"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quorumdb.service");
    std::fs::write(&path, unit).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    // It exits 0 even for unknown keys or bad values; any message is a finding.
    let messages = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && messages.trim().is_empty(),
        "systemd-analyze verify: {messages}"
    );
}
