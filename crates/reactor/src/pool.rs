//! A pool of pinned reactor threads, one per listed core.

use std::fmt;
use std::thread::JoinHandle;

use crate::reactor::{Reactor, ReactorHandle, ReactorStats};

/// A core list that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuListError {
    /// The list has no cores.
    Empty,
    /// A piece that is not a number or a `low-high` range with `low <= high`.
    BadPiece(String),
    /// A core listed twice.
    Duplicate(usize),
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuListError::Empty => f.write_str("empty cpu list"),
            CpuListError::BadPiece(p) => write!(f, "bad cpu list entry '{p}'"),
            CpuListError::Duplicate(c) => write!(f, "cpu {c} listed twice"),
        }
    }
}

impl std::error::Error for CpuListError {}

/// Parses a Linux-style core list: `0`, `2-5`, `0,2,4-6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuListError> {
    const MAX_CPU: usize = 4096;
    let mut cores = Vec::new();
    for piece in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || CpuListError::BadPiece(piece.to_string());
        let (lo, hi) = match piece.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let c: usize = piece.parse().map_err(|_| bad())?;
                (c, c)
            }
        };
        if lo > hi || hi >= MAX_CPU {
            return Err(bad());
        }
        for c in lo..=hi {
            if cores.contains(&c) {
                return Err(CpuListError::Duplicate(c));
            }
            cores.push(c);
        }
    }
    if cores.is_empty() {
        return Err(CpuListError::Empty);
    }
    Ok(cores)
}

/// Why a pool could not start.
#[derive(Debug)]
pub enum ReactorPoolError {
    /// A listed core does not exist or is not in this process's affinity mask.
    NoSuchCore(usize),
    /// The thread could not be spawned or pinned.
    Spawn(std::io::Error),
}

impl fmt::Display for ReactorPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReactorPoolError::NoSuchCore(c) => {
                write!(f, "cpu {c} is not available to this process")
            }
            ReactorPoolError::Spawn(e) => write!(f, "cannot start reactor thread: {e}"),
        }
    }
}

impl std::error::Error for ReactorPoolError {}

/// Reactor threads, one per core, each pinned to its core.
pub struct ReactorPool {
    handles: Vec<ReactorHandle>,
    threads: Vec<JoinHandle<ReactorStats>>,
}

impl ReactorPool {
    /// Starts one pinned reactor per core in `cores`.
    pub fn start(cores: &[usize]) -> Result<Self, ReactorPoolError> {
        let available = core_affinity::get_core_ids().unwrap_or_default();
        if let Some(&c) = cores
            .iter()
            .find(|&&c| !available.iter().any(|id| id.id == c))
        {
            return Err(ReactorPoolError::NoSuchCore(c));
        }
        crate::clock::Tick::calibrate();
        let mut pool = ReactorPool {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        for (id, &core) in cores.iter().enumerate() {
            let (handle, inbox) = Reactor::channel(id, Some(core));
            let (pinned_tx, pinned_rx) = crossbeam_channel::bounded(1);
            let thread = std::thread::Builder::new()
                .name(format!("reactor{id}"))
                .spawn(move || {
                    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    let _ = pinned_tx.send(pinned);
                    Reactor::with_inbox(id, Some(core), inbox).run()
                })
                .map_err(ReactorPoolError::Spawn)?;
            pool.handles.push(handle);
            pool.threads.push(thread);
            if pinned_rx.recv() != Ok(true) {
                pool.shutdown();
                return Err(ReactorPoolError::Spawn(std::io::Error::other(format!(
                    "cannot pin reactor {id} to cpu {core}"
                ))));
            }
        }
        Ok(pool)
    }

    /// Handles to the reactors, in core-list order.
    pub fn handles(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// Current busy/idle time of every reactor (asked of each reactor by message).
    pub fn stats(&self) -> Vec<ReactorStats> {
        self.handles
            .iter()
            .filter_map(|h| h.call(|r| r.stats()).ok())
            .collect()
    }

    /// Stops every reactor after its current pass and joins the threads.
    pub fn shutdown(self) -> Vec<ReactorStats> {
        for h in &self.handles {
            let _ = h.stop();
        }
        self.threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_ranges_and_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("2-5"), Ok(vec![2, 3, 4, 5]));
        assert_eq!(parse_cpu_list("0, 2,4-5"), Ok(vec![0, 2, 4, 5]));
        assert_eq!(parse_cpu_list(""), Err(CpuListError::Empty));
        assert!(matches!(
            parse_cpu_list("3-1"),
            Err(CpuListError::BadPiece(_))
        ));
        assert!(matches!(
            parse_cpu_list("a"),
            Err(CpuListError::BadPiece(_))
        ));
        assert!(matches!(
            parse_cpu_list("99999"),
            Err(CpuListError::BadPiece(_))
        ));
        assert_eq!(parse_cpu_list("1,0-1"), Err(CpuListError::Duplicate(1)));
    }

    #[test]
    fn pool_pins_and_stops() {
        let pool = ReactorPool::start(&[0]).expect("core 0 exists");
        assert_eq!(pool.handles().len(), 1);
        assert_eq!(pool.handles()[0].core(), Some(0));
        let stats = pool.stats();
        assert_eq!(stats.len(), 1);
        let done = pool.shutdown();
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn missing_core_is_refused() {
        assert!(matches!(
            ReactorPool::start(&[4095]),
            Err(ReactorPoolError::NoSuchCore(4095))
        ));
    }
}
