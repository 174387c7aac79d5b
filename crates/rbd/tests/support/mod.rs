//! Test support: a throwaway Ceph cluster (scripts/ceph/cluster.sh) and a small driver that runs
//! requests through an IoChannel the way a reactor would (submit, sleep on the completion fd,
//! drain).

#![allow(dead_code)]

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spinblk_bdev::{BdevIo, Completion, IoChannel, IoOp, IoVec};

/// The repository's scripts/ceph/cluster.sh.
pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph/cluster.sh")
}

/// Whether the Ceph tools and libraries are here. Missing: `Err(reason)`.
pub fn ceph_present() -> Result<(), String> {
    let mut missing = vec![];
    for tool in ["ceph-mon", "ceph-osd", "ceph", "rbd"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            missing.push(tool.to_string());
        }
    }
    if let Err(e) = spinblk_rbd::probe_libraries() {
        missing.push(e.to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Ceph is not installed here (missing: {}); run scripts/install-deps.sh \
             (ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev)",
            missing.join(", ")
        ))
    }
}

/// A running one-node cluster; stopped (its daemons killed by PID, its directory removed) on
/// drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub pool: String,
    /// Wall time `cluster.sh start` took.
    pub start_time: Duration,
}

impl Cluster {
    pub fn start() -> Cluster {
        let t = Instant::now();
        // No mgr (RBD I/O and the rbd CLI's image commands do not need one): ~300 MiB less.
        let out = Command::new("bash")
            .arg(cluster_script())
            .arg("start")
            .env(
                "CEPH_MGR",
                std::env::var("SPINBLK_CEPH_MGR").unwrap_or_else(|_| "0".into()),
            )
            .output()
            .expect("run cluster.sh");
        let start_time = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cluster.sh start failed ({}):\n{stderr}",
            out.status
        );
        eprint!("{stderr}");
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("cluster.sh printed its directory")
            .trim()
            .to_string();
        Cluster {
            dir: PathBuf::from(dir),
            pool: "rbd".into(),
            start_time,
        }
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// Runs `rbd -c CONF ARGS...`; panics with its output on failure.
    pub fn rbd(&self, args: &[&str]) -> String {
        let out = Command::new("rbd")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .expect("run rbd");
        assert!(
            out.status.success(),
            "rbd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_image(&self, name: &str, mib: u64) {
        self.rbd(&[
            "create",
            "--size",
            &format!("{mib}M"),
            &format!("{}/{name}", self.pool),
        ]);
    }

    fn script(&self, cmd: &str) -> String {
        let out = Command::new("bash")
            .arg(cluster_script())
            .arg(cmd)
            .arg(&self.dir)
            .output()
            .expect("run cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `mon=KiB mgr=KiB osd=KiB`.
    pub fn rss(&self) -> String {
        self.script("rss")
    }

    pub fn kill_osd(&self) {
        self.script("kill-osd");
    }

    pub fn config(&self) -> spinblk_rbd::ClusterConfig {
        spinblk_rbd::ClusterConfig {
            config_file: Some(self.conf()),
            ..Default::default()
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(cluster_script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One request for [`run`]: the data segments are owned here and stay alive until it returns.
pub struct Req {
    pub op: IoOp,
    pub offset: u64,
    pub len: u64,
    pub segs: Vec<Vec<u8>>,
    pub durable: bool,
    iov: Vec<IoVec>,
}

// SAFETY: `iov` only points into `segs`, which move with the request (heap buffers).
unsafe impl Send for Req {}

impl Req {
    pub fn write(offset: u64, data: Vec<u8>) -> Req {
        Req::with_segs(IoOp::Write, offset, vec![data])
    }
    pub fn read(offset: u64, len: usize) -> Req {
        Req::with_segs(IoOp::Read, offset, vec![vec![0u8; len]])
    }
    pub fn with_segs(op: IoOp, offset: u64, segs: Vec<Vec<u8>>) -> Req {
        let len = segs.iter().map(|s| s.len() as u64).sum();
        Req {
            op,
            offset,
            len,
            segs,
            durable: false,
            iov: vec![],
        }
    }
    pub fn nodata(op: IoOp, offset: u64, len: u64) -> Req {
        Req {
            op,
            offset,
            len,
            segs: vec![],
            durable: false,
            iov: vec![],
        }
    }
    /// The data of all segments, concatenated.
    pub fn data(&self) -> Vec<u8> {
        self.segs.concat()
    }
    pub fn bdev_io(&mut self, tag: u32) -> BdevIo {
        if self.segs.is_empty() {
            return BdevIo::without_data(tag, self.op, self.offset, self.len);
        }
        self.iov = self
            .segs
            .iter_mut()
            .map(|s| IoVec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        // SAFETY: `run` keeps `self` (the iovec array and the segments) alive and unmoved until
        // this request's completion has been reaped.
        unsafe {
            BdevIo::with_iovecs(
                tag,
                self.op,
                self.offset,
                self.len,
                self.iov.as_ptr(),
                self.iov.len(),
            )
        }
        .with_durable(self.durable)
    }
}

/// Sleeps until `fd` is readable or `timeout` passes.
pub fn wait_fd(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(60_000) as i32) };
}

/// Runs `reqs` through `ch` with at most `qd` in flight, as a reactor would: submit, sleep on the
/// completion fd while requests are in flight, drain. Returns each request's completion (by
/// index) and the time it took; panics if `deadline` passes first.
pub fn run(
    ch: &mut dyn IoChannel,
    reqs: &mut [Req],
    qd: usize,
    deadline: Duration,
) -> Vec<(Completion, Duration)> {
    let fd = ch
        .completion_fd()
        .expect("an RBD channel has a completion fd");
    let start = Instant::now();
    let mut submitted_at = vec![start; reqs.len()];
    let mut results: Vec<Option<(Completion, Duration)>> = vec![None; reqs.len()];
    let mut next = 0usize;
    let mut done = 0usize;
    while done < reqs.len() {
        while next < reqs.len() && ch.in_flight() < qd {
            let io = reqs[next].bdev_io(next as u32);
            match ch.submit(io) {
                Ok(()) => {
                    submitted_at[next] = Instant::now();
                    next += 1;
                }
                Err(_) => break,
            }
        }
        ch.flush_submissions();
        let n = ch.poll_completions(&mut |c| {
            let i = c.tag as usize;
            assert!(results[i].is_none(), "tag {i} completed twice");
            results[i] = Some((c, submitted_at[i].elapsed()));
        });
        done += n;
        if n == 0 {
            assert!(
                start.elapsed() < deadline,
                "{} request(s) still in flight after {deadline:?}",
                ch.in_flight()
            );
            wait_fd(fd, Duration::from_millis(200));
        }
    }
    results.into_iter().map(|r| r.expect("completed")).collect()
}
