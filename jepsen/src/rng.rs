//! The suite's one source of randomness: SplitMix64 from a seed the run prints, so a schedule and
//! every client's choices replay from `--seed`. (Thread timing still varies between replays: the
//! seed fixes what is attempted and when faults start, not how the kernel interleaves it.)

pub use quorumdb::rng::SplitMix64 as Rng;

/// A seed from the clock, for runs started without `--seed`.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::fork(7, 3);
                move |_| r.below(1000)
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::fork(7, 3);
                move |_| r.below(1000)
            })
            .collect();
        assert_eq!(a, b);
        let mut other = Rng::fork(7, 4);
        assert_ne!(a, (0..5).map(|_| other.below(1000)).collect::<Vec<_>>());
    }
}
