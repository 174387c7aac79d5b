//! Tests of reactors on their own threads: messages across sleeps, wake-ups by watched fds,
//! timed pollers, CPU use in each poll mode. Timing-sensitive tests hold one lock so they do
//! not run at the same time as each other, and their bounds are generous for a loaded 2-core
//! machine while still failing when the mechanism is broken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys::EventFd;
use crate::{
    CallError, IdleConfig, PollMode, PollStatus, Poller, ReactorConfig, ReactorHandle, ReactorPool,
    ReactorStats,
};

static TIMING: Mutex<()> = Mutex::new(());

fn timing() -> MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(mode: PollMode) -> ReactorConfig {
    ReactorConfig {
        poll_mode: mode,
        ..ReactorConfig::default()
    }
}

fn one_reactor(cfg: ReactorConfig) -> (ReactorPool, ReactorHandle) {
    let pool = ReactorPool::start_unpinned(1, cfg).expect("reactor starts");
    let h = pool.handles()[0].clone();
    (pool, h)
}

fn stats(h: &ReactorHandle) -> ReactorStats {
    h.call_timeout(|r| r.stats(), Duration::from_secs(5))
        .expect("reactor answers")
}

/// Time thread `tid` of this process has spent on a CPU, from
/// /proc/self/task/<tid>/schedstat.
fn thread_cpu(tid: i32) -> Duration {
    let path = format!("/proc/self/task/{tid}/schedstat");
    let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("on-cpu time");
    Duration::from_nanos(ns)
}

/// Whether thread `tid` of this process is runnable (on a CPU or waiting for one) now.
fn thread_runnable(tid: i32) -> bool {
    let path = format!("/proc/self/task/{tid}/stat");
    let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let state = s[s.rfind(')').expect("comm") + 1..].trim_start();
    state.starts_with('R')
}

/// A reactor thread's CPU use over a window: `share` of the wall time on a CPU, and `demand`,
/// the share of ~1 ms samples that found it runnable (on a CPU or waiting for one). On this
/// shared machine a spinning thread may get 5% of a core, but it is runnable all the time
/// whatever the load, so `demand` tells spinning from sleeping where `share` cannot.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    share: f64,
    demand: f64,
}

fn measure(tid: i32, wall: Duration) -> Cpu {
    let (c0, t0) = (thread_cpu(tid), Instant::now());
    let (mut samples, mut runnable) = (0u32, 0u32);
    while t0.elapsed() < wall {
        samples += 1;
        runnable += u32::from(thread_runnable(tid));
        std::thread::sleep(Duration::from_millis(1));
    }
    let (c1, t1) = (thread_cpu(tid), t0.elapsed());
    Cpu {
        share: c1.saturating_sub(c0).as_secs_f64() / t1.as_secs_f64(),
        demand: f64::from(runnable) / f64::from(samples.max(1)),
    }
}

/// Asserts `m` is a sleeping reactor's: under 5% of a core, and not runnable all the time (a
/// spinning one is, at 95-100% of samples; a sleeping one woken 100 times a second was seen
/// at up to 29% when each wake-up waited on a crowded run queue).
fn assert_sleeps(what: &str, m: Cpu) {
    assert!(m.share < 0.05, "{what}: {m:?}");
    assert!(m.demand < 0.8, "{what}: {m:?}");
}

/// Asserts `m` is a spinning reactor's: runnable (on a CPU or waiting for one) nearly all the
/// time, and on a CPU some of it.
fn assert_spins(what: &str, m: Cpu) {
    assert!(m.demand > 0.8, "{what}: {m:?}");
    assert!(m.share > 0.0, "{what}: {m:?}");
}

/// A poller with no work that lets the reactor sleep, counting its arm/disarm calls.
#[derive(Default, Clone)]
struct Sleepy {
    prepares: Arc<AtomicU64>,
    wakes: Arc<AtomicU64>,
}

impl Poller for Sleepy {
    fn poll(&mut self) -> PollStatus {
        PollStatus::Idle
    }
    fn prepare_sleep(&mut self) -> bool {
        self.prepares.fetch_add(1, Ordering::SeqCst);
        true
    }
    fn wake(&mut self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

/// A poller that can never sleep (the trait's default), counting its arm/disarm calls.
#[derive(Default, Clone)]
struct Insomniac {
    prepares: Arc<AtomicU64>,
    wakes: Arc<AtomicU64>,
}

impl Poller for Insomniac {
    fn poll(&mut self) -> PollStatus {
        PollStatus::Idle
    }
    fn prepare_sleep(&mut self) -> bool {
        self.prepares.fetch_add(1, Ordering::SeqCst);
        false
    }
    fn wake(&mut self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn spin_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[test]
fn call_returns_the_result_and_stop_ends_the_thread() {
    let (pool, h) = one_reactor(config(PollMode::Adaptive));
    assert_eq!(h.call(|r| r.id() + 42), Ok(42));
    assert_eq!(
        h.call_timeout(|r| r.id() + 1, Duration::from_secs(5)),
        Ok(1)
    );
    let done = pool.shutdown();
    assert_eq!(done.len(), 1);
    assert!(h.call(|_| ()).is_err(), "a stopped reactor refuses calls");
    assert_eq!(
        h.call_timeout(|_| (), Duration::from_secs(1)),
        Err(CallError::Gone)
    );
}

#[test]
fn call_timeout_gives_up_on_a_stuck_reactor() {
    let (pool, h) = one_reactor(config(PollMode::Adaptive));
    h.send(|_| std::thread::sleep(Duration::from_millis(400)))
        .expect("alive");
    let t = Instant::now();
    assert_eq!(
        h.call_timeout(|_| 1, Duration::from_millis(50)),
        Err(CallError::Timeout)
    );
    let waited = t.elapsed();
    assert!(waited < Duration::from_millis(300), "waited {waited:?}");
    assert_eq!(h.call_timeout(|_| 2, Duration::from_secs(5)), Ok(2));
    pool.shutdown();
}

#[test]
fn no_message_is_lost_across_sleeps() {
    let _g = timing();
    // A 1 us window: the reactor tries to sleep right after every message, so each send races
    // with a reactor going to sleep at a random point of its protocol.
    let us = Duration::from_micros(1);
    let cfg = ReactorConfig {
        poll_mode: PollMode::Adaptive,
        idle: IdleConfig {
            start: us,
            floor: us,
            cap: us,
            anticipate: false,
        },
        ..ReactorConfig::default()
    };
    let (pool, h) = one_reactor(cfg);
    let sleepy = Sleepy::default();
    let p = sleepy.clone();
    h.call_timeout(move |r| r.add_poller(Box::new(p)), Duration::from_secs(5))
        .expect("poller added");

    // A second sender fires and forgets, each message measuring its own delivery latency.
    const SENDS: u64 = 3_000;
    let ran = Arc::new(AtomicU64::new(0));
    let worst_send_ns = Arc::new(AtomicU64::new(0));
    let sender = {
        let h = h.clone();
        let ran = Arc::clone(&ran);
        let worst = Arc::clone(&worst_send_ns);
        std::thread::spawn(move || {
            let mut seed = 0x1234_5678_9abc_def1_u64;
            for _ in 0..SENDS {
                spin_for(Duration::from_nanos(xorshift(&mut seed) % 30_000));
                let sent = Instant::now();
                let ran = Arc::clone(&ran);
                let worst = Arc::clone(&worst);
                h.send(move |_| {
                    worst.fetch_max(sent.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .expect("alive");
            }
        })
    };

    // This thread waits for each call, so a lost wake-up shows as a timeout.
    const CALLS: u64 = 3_000;
    let mut seed = 0xdead_beef_cafe_f00d_u64;
    let mut worst_call = Duration::ZERO;
    for i in 0..CALLS {
        let pause = xorshift(&mut seed) % 40_000;
        if pause < 2_000 {
            std::thread::yield_now();
        } else {
            spin_for(Duration::from_nanos(pause));
        }
        let t = Instant::now();
        let got = h.call_timeout(move |_| i, Duration::from_secs(2));
        assert_eq!(got, Ok(i), "call {i} was not served within 2 s");
        worst_call = worst_call.max(t.elapsed());
    }
    sender.join().expect("sender");
    let deadline = Instant::now() + Duration::from_secs(2);
    while ran.load(Ordering::SeqCst) < SENDS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = stats(&h);
    let worst_send = Duration::from_nanos(worst_send_ns.load(Ordering::Relaxed));
    println!(
        "lost-message stress: {CALLS} calls (worst round trip {worst_call:?}), {SENDS} sends \
         (worst delivery {worst_send:?}); reactor slept {} times, {} wake-ups, {} aborted",
        st.sleeps, st.wakeups, st.sleep_aborts
    );
    assert_eq!(ran.load(Ordering::SeqCst), SENDS, "every send ran");
    assert!(
        worst_send < Duration::from_secs(1),
        "a send waited {worst_send:?}"
    );
    assert!(
        st.sleeps >= CALLS / 10,
        "the race was barely exercised: only {} sleeps",
        st.sleeps
    );
    pool.shutdown();
    assert_eq!(
        sleepy.prepares.load(Ordering::SeqCst),
        sleepy.wakes.load(Ordering::SeqCst),
        "every prepare_sleep is paired with a wake"
    );
}

#[test]
fn a_poller_that_cannot_sleep_keeps_the_reactor_awake() {
    let _g = timing();
    let (pool, h) = one_reactor(config(PollMode::Adaptive));
    let sleepy = Sleepy::default();
    let insomniac = Insomniac::default();
    let (s, i) = (sleepy.clone(), insomniac.clone());
    // Before its pollers came, the reactor slept on its inbox: count from here.
    let base = h
        .call_timeout(
            move |r| {
                // The sleepy one is asked first, so each aborted attempt must disarm it again.
                r.add_poller(Box::new(s));
                r.add_poller(Box::new(i));
                r.stats()
            },
            Duration::from_secs(5),
        )
        .expect("pollers added");
    let tid = base.tid;
    let cpu = measure(tid, Duration::from_millis(300));
    let st = pool.shutdown().pop().expect("stats");
    println!(
        "insomniac poller: {cpu:?}, sleeps {}, aborts {}",
        st.sleeps - base.sleeps,
        st.sleep_aborts
    );
    assert_eq!(st.sleeps, base.sleeps, "never slept");
    assert!(st.sleep_aborts > 0, "it did try (once per window)");
    assert!(!st.in_interrupt);
    let (sp, sw) = (
        sleepy.prepares.load(Ordering::SeqCst),
        sleepy.wakes.load(Ordering::SeqCst),
    );
    assert!(sp > 0 && sp == sw, "sleepy armed {sp} times, disarmed {sw}");
    let (ip, iw) = (
        insomniac.prepares.load(Ordering::SeqCst),
        insomniac.wakes.load(Ordering::SeqCst),
    );
    assert!(ip > 0 && ip == iw, "insomniac asked {ip} times, woken {iw}");
    assert_spins("a reactor that cannot sleep", cpu);
}

/// A [`Sleepy`] poller whose work is not worth spinning for (an RBD queue's, say).
#[derive(Default, Clone)]
struct NotWorthSpinning(Sleepy);

impl Poller for NotWorthSpinning {
    fn poll(&mut self) -> PollStatus {
        self.0.poll()
    }
    fn prepare_sleep(&mut self) -> bool {
        self.0.prepare_sleep()
    }
    fn wake(&mut self) {
        self.0.wake()
    }
    fn worth_spinning_for(&self) -> bool {
        false
    }
}

#[test]
fn a_reactor_with_nothing_worth_spinning_for_sleeps_when_idle() {
    let _g = timing();
    // A window of a whole second: a reactor that spins for it is runnable throughout the
    // measurement below; one with nothing worth spinning for sleeps at once.
    let second = Duration::from_secs(1);
    let cfg = ReactorConfig {
        poll_mode: PollMode::Adaptive,
        idle: IdleConfig {
            start: second,
            floor: Duration::from_micros(5),
            cap: second,
            anticipate: true,
        },
        ..ReactorConfig::default()
    };
    let (pool, h) = one_reactor(cfg);
    // Adding the poller is a message (work): the window starts again from here.
    let (id, base) = h
        .call_timeout(
            |r| {
                let id = r.add_poller(Box::new(NotWorthSpinning::default()));
                (id, r.stats())
            },
            Duration::from_secs(5),
        )
        .expect("poller added");
    let cpu = measure(base.tid, Duration::from_millis(300));
    let after = stats(&h);
    println!(
        "nothing worth spinning for: {cpu:?}, sleeps {}",
        after.sleeps - base.sleeps
    );
    assert!(after.sleeps > base.sleeps, "it slept");
    assert_sleeps("a reactor with nothing worth spinning for", cpu);

    // One poller worth spinning for beside it restores the policy's window; removing it again
    // goes back to sleeping at once.
    let (worth, st) = h
        .call_timeout(
            |r| {
                let worth = r.add_poller(Box::new(Sleepy::default()));
                (worth, r.stats())
            },
            Duration::from_secs(5),
        )
        .expect("poller added");
    let cpu = measure(st.tid, Duration::from_millis(300));
    println!("one poller worth spinning for: {cpu:?}");
    assert_spins("a reactor with a poller worth spinning for", cpu);
    let st = h
        .call_timeout(
            move |r| {
                r.remove_poller(worth).expect("registered");
                r.stats()
            },
            Duration::from_secs(5),
        )
        .expect("poller removed");
    let cpu = measure(st.tid, Duration::from_millis(300));
    assert_sleeps("the same reactor without it", cpu);
    h.call_timeout(
        move |r| r.remove_poller(id).is_some(),
        Duration::from_secs(5),
    )
    .expect("answers");
    drop(pool);
}

/// Work is signalled by setting `work` and writing the eventfd; the poller notes when it saw it.
struct Kicked {
    work: Arc<AtomicBool>,
    armed: Arc<AtomicBool>,
    seen: Arc<Mutex<Option<Instant>>>,
}

impl Poller for Kicked {
    fn poll(&mut self) -> PollStatus {
        if self.work.swap(false, Ordering::SeqCst) {
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
    fn prepare_sleep(&mut self) -> bool {
        self.armed.store(true, Ordering::SeqCst);
        !self.work.load(Ordering::SeqCst)
    }
    fn wake(&mut self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn a_watched_eventfd_wakes_a_sleeping_reactor() {
    let _g = timing();
    // Without anticipation: its regular 2 ms gaps must each end by the fd, not by a timer.
    let mut cfg = config(PollMode::Adaptive);
    cfg.idle.anticipate = false;
    let (pool, h) = one_reactor(cfg);
    let efd = Arc::new(EventFd::new().expect("eventfd"));
    let work = Arc::new(AtomicBool::new(false));
    let armed = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(None));
    let p = Kicked {
        work: Arc::clone(&work),
        armed: Arc::clone(&armed),
        seen: Arc::clone(&seen),
    };
    let fd = efd.fd();
    let id = h
        .call_timeout(
            move |r| {
                let id = r.add_poller(Box::new(p));
                r.watch_fd(id, fd).map(|()| id)
            },
            Duration::from_secs(5),
        )
        .expect("answer")
        .expect("watched");
    let before = stats(&h);

    let mut lat = Vec::new();
    for _ in 0..20 {
        *seen.lock().expect("lock") = None;
        wait_until("the reactor to arm", Duration::from_secs(5), || {
            armed.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(2));
        assert!(armed.load(Ordering::SeqCst), "nothing woke it meanwhile");
        let t = Instant::now();
        work.store(true, Ordering::SeqCst);
        efd.signal();
        wait_until("the poller to see the work", Duration::from_secs(5), || {
            seen.lock().expect("lock").is_some()
        });
        let at = seen.lock().expect("lock").expect("seen");
        lat.push(at.duration_since(t));
    }
    let after = stats(&h);
    lat.sort();
    println!(
        "eventfd wake-up latency over {} sleeps: min {:?} median {:?} max {:?}",
        lat.len(),
        lat[0],
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    assert!(
        after.wakeups >= before.wakeups + 20,
        "woken by the fd each time"
    );
    assert!(lat[0] < Duration::from_millis(1), "{lat:?}");
    assert!(lat[lat.len() / 2] < Duration::from_millis(5), "{lat:?}");
    assert!(lat[lat.len() - 1] < Duration::from_millis(500), "{lat:?}");

    // Unwatched, the same signal no longer wakes it; a message does.
    h.call_timeout(move |r| r.unwatch_fd(id, fd), Duration::from_secs(5))
        .expect("answer");
    *seen.lock().expect("lock") = None;
    wait_until("the reactor to arm", Duration::from_secs(5), || {
        armed.load(Ordering::SeqCst)
    });
    std::thread::sleep(Duration::from_millis(2));
    work.store(true, Ordering::SeqCst);
    efd.signal();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        seen.lock().expect("lock").is_none(),
        "an unwatched fd woke the reactor"
    );
    h.send(|_| {}).expect("alive");
    wait_until("a message to wake it", Duration::from_secs(5), || {
        seen.lock().expect("lock").is_some()
    });
    pool.shutdown();
}

/// Counts its runs and notes each run's time.
struct Ticker {
    runs: Arc<Mutex<Vec<Instant>>>,
}

impl Poller for Ticker {
    fn poll(&mut self) -> PollStatus {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Instant::now());
        PollStatus::Busy
    }
    fn name(&self) -> &str {
        "ticker"
    }
}

/// Always busy.
struct Spinner;

impl Poller for Spinner {
    fn poll(&mut self) -> PollStatus {
        PollStatus::Busy
    }
}

/// Runs a 10 ms timed poller (beside `other`) until it ran 10 times (5 s at most); returns
/// the run times, the time it was added and the sleeps meanwhile.
fn timed_runs(
    mode: PollMode,
    other: Option<Box<dyn Poller + Send>>,
) -> (Vec<Instant>, Instant, u64) {
    let period = Duration::from_millis(10);
    let (pool, h) = one_reactor(config(mode));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let t = Ticker {
        runs: Arc::clone(&runs),
    };
    let (base, added) = h
        .call_timeout(
            move |r| {
                if let Some(p) = other {
                    r.add_poller(p);
                }
                let added = Instant::now();
                r.add_timed_poller(period, Box::new(t));
                (r.stats().sleeps, added)
            },
            Duration::from_secs(5),
        )
        .expect("added");
    wait_until("10 runs", Duration::from_secs(5), || {
        runs.lock().expect("lock").len() >= 10
    });
    let st = pool.shutdown().pop().expect("stats");
    let runs = runs.lock().expect("lock").clone();
    (runs, added, st.sleeps - base)
}

#[test]
fn timed_pollers_run_at_about_their_period() {
    let _g = timing();
    let period = Duration::from_millis(10);
    for (mode, other) in [
        (PollMode::Adaptive, None),
        (
            PollMode::Busy,
            Some(Box::new(Spinner) as Box<dyn Poller + Send>),
        ),
    ] {
        let (runs, added, sleeps) = timed_runs(mode, other);
        let n = runs.len();
        let first = runs[0].duration_since(added);
        let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1] - w[0]).collect();
        let min = gaps.iter().min().copied().unwrap_or_default();
        let span = runs[n - 1].duration_since(added);
        let mean = span / n as u32;
        println!(
            "{mode}: timed poller (10 ms): {n} runs in {span:?}, first after {first:?}, \
             min gap {min:?}, mean period {mean:?}, {sleeps} sleeps"
        );
        // Never early, never more often than its period (TSC vs Instant: 5% slack).
        assert!(first >= period.mul_f64(0.95), "{mode}: first run early");
        assert!(min >= period.mul_f64(0.95), "{mode}: ran early");
        if mode == PollMode::Adaptive {
            // A sleeping reactor is woken by its timeout (10.1 ms on an idle machine; up to
            // 22 ms seen at a load average of 21 on 2 cores).
            assert!(mean < period * 4, "{mode}: mean period {mean:?}");
            assert!(sleeps as usize >= n - 1, "slept between runs: {sleeps}");
        } else {
            // A spinning reactor on a loaded machine is at the scheduler's mercy: only that it
            // ran (10 times within 5 s) is asserted for timing.
            assert_eq!(sleeps, 0, "busy mode with a poller spins");
        }
    }
}

/// Has work every `every`, measured from its last work.
struct Steady {
    every: Duration,
    last: Instant,
    done: u64,
}

impl Poller for Steady {
    fn poll(&mut self) -> PollStatus {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            self.done += 1;
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
    fn prepare_sleep(&mut self) -> bool {
        self.last.elapsed() < self.every
    }
}

#[test]
fn a_steady_load_never_sleeps_and_an_idle_reactor_does() {
    let _g = timing();
    let born = Instant::now();
    let (pool, h) = one_reactor(config(PollMode::Adaptive));
    let (id, base) = h
        .call_timeout(
            |r| {
                let id = r.add_poller(Box::new(Steady {
                    every: Duration::from_micros(10),
                    last: Instant::now(),
                    done: 0,
                }));
                (id, r.stats().sleeps)
            },
            Duration::from_secs(5),
        )
        .expect("added");
    std::thread::sleep(Duration::from_millis(300));
    let (st, done) = h
        .call_timeout(
            move |r| {
                let done = r.poller::<Steady>(id).map_or(0, |s| s.done);
                // Now make it idle: work every 10 s.
                if let Some(s) = r.poller_mut::<Steady>(id) {
                    s.every = Duration::from_secs(10);
                }
                (r.stats(), done)
            },
            Duration::from_secs(5),
        )
        .expect("answer");
    println!(
        "steady 10 us load: {done} works, {} sleeps, {} aborts",
        st.sleeps - base,
        st.sleep_aborts
    );
    assert!(done > 100, "the load ran: {done}");
    assert_eq!(st.sleeps, base, "a steady load never sleeps");
    // Idle now, so it sleeps (a thread that just spun may wait a while for a CPU here).
    let mut idle = stats(&h);
    let t = Instant::now();
    while idle.sleep < st.sleep + Duration::from_millis(50) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "not sleeping: {idle:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        idle = stats(&h);
    }
    assert!(idle.sleeps > st.sleeps);
    // Busy, idle and sleep time cover the reactor's life, and nothing twice.
    let life = born.elapsed();
    let accounted = idle.busy + idle.idle + idle.sleep;
    println!(
        "accounting: busy {:?} idle {:?} sleep {:?} = {accounted:?} of {life:?}",
        idle.busy, idle.idle, idle.sleep
    );
    assert!(accounted <= life.mul_f64(1.02), "{accounted:?} > {life:?}");
    assert!(accounted >= life.mul_f64(0.8), "{accounted:?} << {life:?}");
    assert!(idle.busy > Duration::ZERO && idle.idle > Duration::ZERO);
    pool.shutdown();
}

#[test]
fn cpu_use_follows_the_poll_mode() {
    let _g = timing();
    let wall = Duration::from_secs(1);

    // Adaptive, one idle poller that allows sleep, plus a 10 ms statistics-like timer.
    let (pool, h) = one_reactor(config(PollMode::Adaptive));
    let tid = h
        .call_timeout(
            |r| {
                r.add_poller(Box::new(Sleepy::default()));
                r.add_timed_poller(
                    Duration::from_millis(10),
                    Box::new(Ticker {
                        runs: Arc::default(),
                    }),
                );
                r.stats().tid
            },
            Duration::from_secs(5),
        )
        .expect("added");
    std::thread::sleep(Duration::from_millis(50));
    let adaptive = measure(tid, wall);
    let st = stats(&h);

    // The same reactor switched to busy at run time.
    pool.set_poll_mode(PollMode::Busy).expect("alive");
    std::thread::sleep(Duration::from_millis(20));
    let before_busy = stats(&h);
    let busy = measure(tid, wall);
    let st_busy = stats(&h);

    // And back.
    pool.set_poll_mode(PollMode::Adaptive).expect("alive");
    std::thread::sleep(Duration::from_millis(50));
    let back = measure(tid, Duration::from_millis(500));
    pool.shutdown();

    // Busy mode with no pollers at all sleeps on its inbox.
    let (pool, h) = one_reactor(config(PollMode::Busy));
    let tid = stats(&h).tid;
    std::thread::sleep(Duration::from_millis(20));
    let empty = measure(tid, Duration::from_millis(500));
    let st_empty = stats(&h);
    pool.shutdown();

    let pct = |c: Cpu| {
        format!(
            "{:.2}% (runnable {:.0}%)",
            c.share * 100.0,
            c.demand * 100.0
        )
    };
    println!(
        "reactor cpu: adaptive idle {} (sleep {:?}, {} sleeps, in_interrupt {}), busy {} \
         (in_interrupt {}), adaptive again {}, busy without pollers {} (in_interrupt {})",
        pct(adaptive),
        st.sleep,
        st.sleeps,
        st.in_interrupt,
        pct(busy),
        st_busy.in_interrupt,
        pct(back),
        pct(empty),
        st_empty.in_interrupt
    );
    assert_sleeps("an idle adaptive reactor", adaptive);
    assert!(st.in_interrupt, "and reports it");
    assert!(
        st.sleep > Duration::from_millis(500),
        "sleep accounted: {:?}",
        st.sleep
    );
    assert_spins("busy mode", busy);
    assert_eq!(st_busy.sleeps, before_busy.sleeps, "busy mode never sleeps");
    assert!(!st_busy.in_interrupt);
    assert_eq!(st_busy.poll_mode, PollMode::Busy);
    assert_sleeps("switched back to adaptive", back);
    assert_sleeps("no pollers", empty);
    assert!(st_empty.in_interrupt, "and is in its sleeping regime");
}

/// Drives a [`Kicked`] poller on one adaptive reactor with `gaps.len()` requests, each made
/// (work flag, then the eventfd) at its gap after the previous one was seen, timed by spinning
/// so the gaps are exact. Every request must be seen; returns the reactor's statistics change.
fn drive_gaps(gaps: &[Duration]) -> (ReactorStats, ReactorStats) {
    let (pool, h) = one_reactor(config(PollMode::Adaptive));
    let efd = Arc::new(EventFd::new().expect("eventfd"));
    let work = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(None));
    let p = Kicked {
        work: Arc::clone(&work),
        armed: Arc::new(AtomicBool::new(false)),
        seen: Arc::clone(&seen),
    };
    let fd = efd.fd();
    h.call_timeout(
        move |r| {
            let id = r.add_poller(Box::new(p));
            r.watch_fd(id, fd)
        },
        Duration::from_secs(5),
    )
    .expect("answer")
    .expect("watched");
    let before = stats(&h);
    let mut last = Instant::now();
    for (i, gap) in gaps.iter().enumerate() {
        while last.elapsed() < *gap {
            std::hint::spin_loop();
        }
        *seen.lock().expect("lock") = None;
        work.store(true, Ordering::SeqCst);
        efd.signal();
        let t = Instant::now();
        loop {
            if let Some(at) = *seen.lock().expect("lock") {
                last = at;
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "request {i} was never seen"
            );
            std::hint::spin_loop();
        }
    }
    let after = stats(&h);
    pool.shutdown();
    (before, after)
}

#[test]
fn a_regular_light_load_is_anticipated_and_an_irregular_one_is_not() {
    let _g = timing();
    // 400 us between a request's completion and the next: longer than the 100 us spin
    // budget, so without anticipation every request would wait for a wake-up.
    let n = 1500u64;
    let regular = || {
        let (b, a) = drive_gaps(&vec![Duration::from_micros(400); n as usize]);
        let (ant, hits) = (
            a.anticipations - b.anticipations,
            a.anticipation_hits - b.anticipation_hits,
        );
        println!(
            "regular 400 us gaps: {n} requests, {ant} anticipated wake-ups, {hits} caught by the spin, {} sleeps",
            a.sleeps - b.sleeps
        );
        (b, a, ant, hits)
    };
    // The gaps the reactor sees include its wake-up latency. Where that swings by more than
    // an eighth of the gap for a whole run (clean-clone CI once saw 0 anticipations of 1500
    // while other tests ran beside it), the load is irregular as the reactor sees it: measure
    // once more before calling it a failure.
    let (mut b, mut a, mut ant, mut hits) = regular();
    if hits == 0 {
        println!("nothing anticipated; the wake-up latency may have swung: measuring once more");
        (b, a, ant, hits) = regular();
    }
    assert!(hits > 0, "a regular load was never anticipated");
    assert!(hits <= ant, "{hits} hits of {ant}");
    assert!(
        a.sleeps - b.sleeps >= n / 2,
        "it still sleeps between requests"
    );

    // Gaps spread from 150 us to 1.5 ms (a fixed pseudo-random sequence): never 8 in a row
    // within an eighth of each other, so nothing is anticipated.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let gaps: Vec<Duration> = (0..600)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_micros(150 + x % 1350)
        })
        .collect();
    let (b, a) = drive_gaps(&gaps);
    let ant = a.anticipations - b.anticipations;
    println!(
        "irregular gaps: {} requests, {ant} anticipated wake-ups",
        gaps.len()
    );
    assert!(ant < 60, "{ant} anticipations of an irregular load");
}

/// A poller that finds work on every `every`th poll, spinning `work` in each poll that finds
/// it, and records, for its first `keep` polls, whether it found work and when the poll began
/// and ended.
struct Pattern {
    every: u32,
    work: Duration,
    n: u32,
    keep: usize,
    polls: Arc<Mutex<Vec<(bool, Instant, Instant)>>>,
}

impl Poller for Pattern {
    fn poll(&mut self) -> PollStatus {
        let start = Instant::now();
        let busy = self.n.is_multiple_of(self.every);
        self.n = self.n.wrapping_add(1);
        if busy {
            spin_for(self.work);
        }
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        if polls.len() < self.keep {
            polls.push((busy, start, Instant::now()));
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

/// For a poller busy on every `every`th poll (spinning `work` in each), on a busy-mode reactor
/// with the given batch wait: the gaps from the end of each poll that found work to the start
/// of the next poll, over `keep` polls.
fn gaps_after_work(every: u32, work: Duration, batch_wait: Duration, keep: usize) -> Vec<Duration> {
    let cfg = ReactorConfig {
        batch_wait,
        ..config(PollMode::Busy)
    };
    let (pool, h) = one_reactor(cfg);
    let polls = Arc::new(Mutex::new(Vec::new()));
    let p = Pattern {
        every,
        work,
        n: 0,
        keep,
        polls: Arc::clone(&polls),
    };
    h.call_timeout(move |r| r.add_poller(Box::new(p)), Duration::from_secs(5))
        .expect("poller added");
    let t0 = Instant::now();
    while polls.lock().unwrap_or_else(|e| e.into_inner()).len() < keep {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the reactor stopped polling"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    pool.shutdown();
    let polls = polls.lock().unwrap_or_else(|e| e.into_inner());
    polls
        .windows(2)
        .filter(|w| w[0].0)
        .map(|w| w[1].1.duration_since(w[0].2))
        .collect()
}

/// How many of `gaps` are `wait` or longer.
fn at_least(gaps: &[Duration], wait: Duration) -> usize {
    gaps.iter().filter(|g| **g >= wait).count()
}

#[test]
fn a_busy_pass_waits_for_a_batch_only_while_work_streams_in() {
    let _g = timing();
    let wait = Duration::from_micros(200);
    // Work in every short pass: each busy pass waits the whole batch wait (a preemption can
    // only make a gap longer; 10% off for the tick calibration).
    let streaming = gaps_after_work(1, Duration::ZERO, wait, 4_000);
    assert!(streaming.len() > 1_000);
    // The first busy pass is not waited after: it woke a reactor that had no poller and slept.
    let shortest = streaming.iter().skip(1).min().copied().unwrap_or_default();
    assert!(
        shortest >= wait * 9 / 10,
        "a streaming busy pass waited only {shortest:?}"
    );

    // Gaps of 200 us or more come only from preemption in the cases below.
    let rare = |gaps: &[Duration], what: &str| {
        let long = at_least(gaps, wait);
        assert!(
            long * 10 < gaps.len(),
            "{what}: {long} of {} busy passes were followed by a gap of {wait:?} or more",
            gaps.len()
        );
    };
    // Work in every fourth pass: three idle passes between busy ones, more than
    // STREAMING_IDLE_PASSES, so no busy pass waits.
    const { assert!(crate::STREAMING_IDLE_PASSES < 3) };
    let lone = gaps_after_work(4, Duration::ZERO, wait, 4_000);
    assert!(lone.len() > 500);
    rare(&lone, "lone requests");
    // Long passes (the reactor is the bottleneck) are not waited after.
    let long_pass = wait * u32::try_from(crate::SHORT_PASS_WAITS).unwrap_or(u32::MAX) * 5 / 4;
    let long = gaps_after_work(1, long_pass, wait, 300);
    assert!(long.len() > 200);
    rare(&long, "long passes");
    // Turned off: streaming work is not waited for either.
    let off = gaps_after_work(1, Duration::ZERO, Duration::ZERO, 4_000);
    rare(&off, "batch wait off");
}
