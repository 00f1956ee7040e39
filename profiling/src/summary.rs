//! Scenario summaries, their JSON files, and the comparison with the baseline.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How much peak heap or allocations per MiB may rise over the baseline before `check`
/// fails.
pub const TOLERANCE: f64 = 0.10;

/// What one scenario allocated while profiled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The scenario.
    pub scenario: String,
    /// Bytes hashed or sent.
    pub bytes_moved: u64,
    /// Heap bytes live at the global peak.
    pub peak_heap_bytes: usize,
    /// Heap blocks live at the global peak.
    pub peak_heap_blocks: usize,
    /// Allocations made.
    pub allocations: u64,
    /// Allocations per MiB moved.
    pub allocations_per_mib: f64,
    /// Heap bytes still live once everything the scenario started was stopped, not counting
    /// `pool_bytes_at_end`. Must be 0.
    pub live_bytes_at_end: usize,
    /// Heap blocks still live then, likewise.
    pub live_blocks_at_end: usize,
    /// Bytes the global rayon pool keeps for itself: its job queue (a crossbeam `Injector`)
    /// holds on to its current block of slots, allocated by whichever push needed it. One
    /// block (1,520 bytes), whatever the workload; reported, not counted as a leak.
    pub pool_bytes_at_end: usize,
    /// Runs this summary stands for (see [`combine`]).
    #[serde(default = "one")]
    pub runs: usize,
}

fn one() -> usize {
    1
}

/// Frames that mark an allocation as the rayon pool's own (see `pool_bytes_at_end`).
const POOL_FRAMES: &[&str] = &["crossbeam_deque::deque::Injector"];

/// Bytes and blocks live at the end of the dhat profile at `path` that the rayon pool's queue
/// allocated.
pub fn pool_at_end(path: &Path) -> std::io::Result<(usize, usize)> {
    #[derive(Deserialize)]
    struct Profile {
        pps: Vec<Site>,
        ftbl: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Site {
        #[serde(default)]
        eb: usize,
        #[serde(default)]
        ebk: usize,
        fs: Vec<usize>,
    }
    let p: Profile =
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)?;
    Ok(p.pps
        .iter()
        .filter(|site| site.eb > 0)
        .filter(|site| {
            site.fs.iter().any(|&f| {
                p.ftbl
                    .get(f)
                    .is_some_and(|frame| POOL_FRAMES.iter().any(|m| frame.contains(m)))
            })
        })
        .fold((0, 0), |(b, k), site| (b + site.eb, k + site.ebk)))
}

impl Summary {
    pub fn new(
        scenario: &str,
        bytes_moved: u64,
        s: &dhat::HeapStats,
        (pool, pool_blocks): (usize, usize),
    ) -> Self {
        let mib = bytes_moved as f64 / f64::from(1 << 20);
        Summary {
            scenario: scenario.to_string(),
            bytes_moved,
            peak_heap_bytes: s.max_bytes,
            peak_heap_blocks: s.max_blocks,
            allocations: s.total_blocks,
            allocations_per_mib: (s.total_blocks as f64 / mib * 100.0).round() / 100.0,
            live_bytes_at_end: s.curr_bytes.saturating_sub(pool),
            live_blocks_at_end: s.curr_blocks.saturating_sub(pool_blocks),
            pool_bytes_at_end: pool,
            runs: 1,
        }
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "{:<16} peak {:>9} B in {:>5} blocks, {:>9.2} allocs/MiB, {} B live at end{}",
            self.scenario,
            self.peak_heap_bytes,
            self.peak_heap_blocks,
            self.allocations_per_mib,
            self.live_bytes_at_end,
            if self.runs > 1 {
                format!(" ({} runs)", self.runs)
            } else {
                String::new()
            }
        )
    }
}

/// Which run of a scenario stands for it when it was run several times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The lowest peak and allocation rate (for `check`: a regression must show in every run).
    Best,
    /// The highest (for `bless`: the baseline covers the spread between runs).
    Worst,
}

/// Folds several runs of one scenario into one summary: peak and allocations per MiB as
/// `pick` says, bytes live at the end the highest of any run (a leak in one run is a leak).
pub fn combine(runs: &[Summary], pick: Pick) -> Option<Summary> {
    let key = |s: &Summary| (s.peak_heap_bytes, s.allocations_per_mib);
    let mut out = match pick {
        Pick::Best => runs.iter().min_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        }),
        Pick::Worst => runs.iter().max_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        }),
    }?
    .clone();
    let rates = runs.iter().map(|s| s.allocations_per_mib);
    out.allocations_per_mib = match pick {
        Pick::Best => rates.fold(f64::INFINITY, f64::min),
        Pick::Worst => rates.fold(0.0, f64::max),
    };
    if let Some(leaky) = runs.iter().max_by_key(|s| s.live_bytes_at_end) {
        out.live_bytes_at_end = leaky.live_bytes_at_end;
        out.live_blocks_at_end = leaky.live_blocks_at_end;
    }
    out.runs = runs.len();
    Some(out)
}

/// Every regression of `now` against `base`, described. Empty means the check passes.
pub fn compare(base: &[Summary], now: &[Summary]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in now {
        if s.live_bytes_at_end > 0 {
            problems.push(format!(
                "{}: {} bytes in {} blocks still live at the end (a leak)",
                s.scenario, s.live_bytes_at_end, s.live_blocks_at_end
            ));
        }
        let Some(b) = base.iter().find(|b| b.scenario == s.scenario) else {
            problems.push(format!("{}: not in the baseline", s.scenario));
            continue;
        };
        let rose = |now: f64, was: f64| now > was * (1.0 + TOLERANCE);
        if rose(s.peak_heap_bytes as f64, b.peak_heap_bytes as f64) {
            problems.push(format!(
                "{}: peak heap {} B, baseline {} B (+{:.1} %)",
                s.scenario,
                s.peak_heap_bytes,
                b.peak_heap_bytes,
                percent(s.peak_heap_bytes as f64, b.peak_heap_bytes as f64)
            ));
        }
        if rose(s.allocations_per_mib, b.allocations_per_mib) {
            problems.push(format!(
                "{}: {:.2} allocations per MiB, baseline {:.2} (+{:.1} %)",
                s.scenario,
                s.allocations_per_mib,
                b.allocations_per_mib,
                percent(s.allocations_per_mib, b.allocations_per_mib)
            ));
        }
    }
    problems
}

fn percent(now: f64, was: f64) -> f64 {
    (now / was - 1.0) * 100.0
}

pub fn write(path: &Path, all: &[Summary]) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(all).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

/// `base` with each scenario in `new` replaced (or added, at the end): blessing some scenarios
/// leaves the others' entries as they were.
pub fn merge(mut base: Vec<Summary>, new: Vec<Summary>) -> Vec<Summary> {
    for n in new {
        match base.iter_mut().find(|b| b.scenario == n.scenario) {
            Some(b) => *b = n,
            None => base.push(n),
        }
    }
    base
}

pub fn read(path: &Path) -> std::io::Result<Vec<Summary>> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
}

pub fn write_one(path: &Path, s: &Summary) -> std::io::Result<()> {
    std::fs::write(
        path,
        serde_json::to_string_pretty(s).map_err(std::io::Error::other)?,
    )
}

pub fn read_one(path: &Path) -> std::io::Result<Summary> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(peak: usize, per_mib: f64, live: usize) -> Summary {
        Summary {
            scenario: "x".into(),
            bytes_moved: 1 << 20,
            peak_heap_bytes: peak,
            peak_heap_blocks: 1,
            allocations: 1,
            allocations_per_mib: per_mib,
            live_bytes_at_end: live,
            live_blocks_at_end: usize::from(live > 0),
            pool_bytes_at_end: 0,
            runs: 1,
        }
    }

    #[test]
    fn blessing_some_scenarios_keeps_the_others() {
        let named = |name: &str, peak| Summary {
            scenario: name.into(),
            ..s(peak, 1.0, 0)
        };
        let base = vec![named("a", 1), named("b", 2), named("c", 3)];
        let merged = merge(base, vec![named("b", 20), named("d", 40)]);
        let got: Vec<_> = merged
            .iter()
            .map(|m| (m.scenario.as_str(), m.peak_heap_bytes))
            .collect();
        assert_eq!(got, [("a", 1), ("b", 20), ("c", 3), ("d", 40)]);
    }

    #[test]
    fn combine_picks_best_or_worst_and_keeps_any_leak() {
        let runs = [s(1200, 10.0, 0), s(1000, 12.0, 0), s(1100, 11.0, 16)];
        let best = combine(&runs, Pick::Best).unwrap();
        assert_eq!(
            (best.peak_heap_bytes, best.allocations_per_mib),
            (1000, 10.0)
        );
        assert_eq!((best.live_bytes_at_end, best.runs), (16, 3));
        let worst = combine(&runs, Pick::Worst).unwrap();
        assert_eq!(
            (worst.peak_heap_bytes, worst.allocations_per_mib),
            (1200, 12.0)
        );
        assert!(combine(&[], Pick::Best).is_none());
    }

    #[test]
    fn within_tolerance_passes_and_beyond_fails() {
        let base = [s(1000, 10.0, 0)];
        assert!(compare(&base, &[s(1100, 11.0, 0)]).is_empty());
        assert_eq!(compare(&base, &[s(1101, 10.0, 0)]).len(), 1);
        assert_eq!(compare(&base, &[s(1000, 11.5, 0)]).len(), 1);
        assert_eq!(compare(&base, &[s(1000, 10.0, 8)]).len(), 1);
        let mut other = s(1, 1.0, 0);
        other.scenario = "y".into();
        assert_eq!(compare(&base, &[other]).len(), 1);
    }
}
