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
        }
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "{:<16} peak {:>9} B in {:>5} blocks, {:>9.2} allocs/MiB, {} B live at end",
            self.scenario,
            self.peak_heap_bytes,
            self.peak_heap_blocks,
            self.allocations_per_mib,
            self.live_bytes_at_end
        )
    }
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
        }
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
