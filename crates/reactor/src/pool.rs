//! A pool of pinned reactor threads, one per listed core.

use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::reactor::{PollMode, Reactor, ReactorConfig, ReactorGone, ReactorHandle, ReactorStats};

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

/// How long [`ReactorPool::stats`] waits for the reactors' answers.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts one reactor thread (pinned to `core` if given) and returns its handle once the
/// reactor exists.
fn spawn(
    id: usize,
    core: Option<usize>,
    config: ReactorConfig,
) -> Result<(ReactorHandle, JoinHandle<ReactorStats>), ReactorPoolError> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name(format!("reactor{id}"))
        .spawn(move || {
            crate::sys::set_timer_slack_min();
            if let Some(core) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    let _ = ready_tx.send(Err(std::io::Error::other(format!(
                        "cannot pin reactor {id} to cpu {core}"
                    ))));
                    return ReactorStats::default();
                }
            }
            match Reactor::with_config(id, core, config) {
                Ok((reactor, handle)) => {
                    let _ = ready_tx.send(Ok(handle));
                    reactor.run()
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    ReactorStats::default()
                }
            }
        })
        .map_err(ReactorPoolError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(handle)) => Ok((handle, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(ReactorPoolError::Spawn(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(ReactorPoolError::Spawn(std::io::Error::other(format!(
                "reactor {id} exited while starting"
            ))))
        }
    }
}

impl ReactorPool {
    /// Starts one pinned reactor per core in `cores`, in the default configuration (adaptive
    /// polling).
    pub fn start(cores: &[usize]) -> Result<Self, ReactorPoolError> {
        Self::start_with(cores, ReactorConfig::default())
    }

    /// Starts one pinned reactor per core in `cores`, configured.
    pub fn start_with(cores: &[usize], config: ReactorConfig) -> Result<Self, ReactorPoolError> {
        let available = core_affinity::get_core_ids().unwrap_or_default();
        if let Some(&c) = cores
            .iter()
            .find(|&&c| !available.iter().any(|id| id.id == c))
        {
            return Err(ReactorPoolError::NoSuchCore(c));
        }
        Self::spawn_all(cores.iter().map(|&c| Some(c)), config)
    }

    /// Starts `count` reactors that are not pinned (tests, and hosts where the scheduler should
    /// place them).
    pub fn start_unpinned(count: usize, config: ReactorConfig) -> Result<Self, ReactorPoolError> {
        Self::spawn_all(std::iter::repeat_n(None, count), config)
    }

    fn spawn_all(
        cores: impl Iterator<Item = Option<usize>>,
        config: ReactorConfig,
    ) -> Result<Self, ReactorPoolError> {
        crate::clock::Tick::calibrate();
        let mut pool = ReactorPool {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        for (id, core) in cores.enumerate() {
            match spawn(id, core, config) {
                Ok((handle, thread)) => {
                    pool.handles.push(handle);
                    pool.threads.push(thread);
                }
                Err(e) => {
                    pool.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Handles to the reactors, in core-list order.
    pub fn handles(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// Current accounting of every reactor that answers within [`STATS_TIMEOUT`] (asked of all
    /// reactors at once, by message).
    pub fn stats(&self) -> Vec<ReactorStats> {
        self.stats_within(STATS_TIMEOUT)
    }

    /// Current accounting of every reactor that answers within `timeout` in all.
    pub fn stats_within(&self, timeout: Duration) -> Vec<ReactorStats> {
        let deadline = Instant::now() + timeout;
        let pending: Vec<_> = self
            .handles
            .iter()
            .filter_map(|h| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                h.send(move |r| {
                    let _ = tx.send(r.stats());
                })
                .ok()
                .map(|()| rx)
            })
            .collect();
        pending
            .into_iter()
            .filter_map(|rx| rx.recv_deadline(deadline).ok())
            .collect()
    }

    /// Switches every reactor to `mode` (each after its current pass).
    pub fn set_poll_mode(&self, mode: PollMode) -> Result<(), ReactorGone> {
        self.handles.iter().try_for_each(|h| h.set_poll_mode(mode))
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
