//! Adaptive polling against the real target (issue 13): reactors sleep when their queues are
//! idle and every request that arrives around a sleep is still served.

use std::time::{Duration, Instant};

use spinblk_testkit::*;

/// CPU time (user + system) of process `pid` so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may contain spaces): state is field 3, utime 14,
    // stime 15 (1-based), so 11 and 12 after the ")".
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The target's share of one core over `window`, while nothing happens.
fn idle_cpu_share(pid: u32, window: Duration) -> f64 {
    let (c0, t0) = (cpu_time(pid), Instant::now());
    std::thread::sleep(window);
    (cpu_time(pid) - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

#[test]
fn requests_racing_a_reactor_going_to_sleep_are_all_served() {
    let target = Target::start(TargetConfig::malloc(16 * MIB));
    let mut client = target.connect();
    let mut q = client.queue(0);
    // A lost wake-up would leave a request waiting forever: every request must complete well
    // within this.
    q.set_timeout(Duration::from_secs(10));
    let mut rng = Rng::new(0x5eed);
    let deadline = Instant::now() + Duration::from_secs(12);
    let (mut bursts, mut requests) = (0u64, 0u64);
    let data = pattern(7, 4096);
    while Instant::now() < deadline && bursts < 4000 {
        let n = 1 + rng.below(8) as usize;
        let writes: Vec<(u64, &[u8])> = (0..n)
            .map(|_| (rng.below(4095) * 4096, &data[..]))
            .collect();
        for ret in q.write_many(&writes) {
            assert_eq!(ret, 0, "write failed");
        }
        requests += n as u64;
        bursts += 1;
        // Pauses around the reactor's idle window (tens of microseconds), so many of them end
        // exactly while it arms notifications and goes to sleep.
        let pause = Duration::from_micros(rng.below(250));
        let t = Instant::now();
        if rng.below(2) == 0 {
            while t.elapsed() < pause {
                std::hint::spin_loop();
            }
        } else {
            std::thread::sleep(pause);
        }
    }
    println!("{bursts} bursts, {requests} requests, none lost");
    assert!(bursts >= 200, "only {bursts} bursts ran");
    let back = q.read_ok(0, 4096);
    assert_eq!(back.len(), 4096);
}

#[test]
fn an_idle_connected_client_leaves_the_reactor_asleep() {
    let target = Target::start(TargetConfig::malloc(16 * MIB));
    let mut client = target.connect();
    client.queue(0).write_ok(0, &pattern(1, 4096));
    let share = idle_cpu_share(target.pid(), Duration::from_secs(2));
    println!(
        "idle target CPU with a connected client: {:.2}% of a core",
        share * 100.0
    );
    // Busy polling costs ~100%; asleep it is well under 1%. The bound leaves room for a
    // loaded test machine.
    assert!(
        share < 0.10,
        "idle target used {:.1}% of a core",
        share * 100.0
    );
    // And it wakes up for the next request.
    assert_eq!(client.queue(0).read_ok(0, 4096), pattern(1, 4096));
}

#[test]
fn every_bdev_kind_sleeps_and_wakes() {
    let dir = TempDir::new("adaptive-kinds");
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("backing file");
    let file = file.to_string_lossy().into_owned();
    let kinds: [(&str, Vec<&str>); 3] = [
        ("malloc", vec!["--malloc", "16M"]),
        ("null", vec!["--null", "16M"]),
        ("file", vec!["--file", &file]),
    ];
    for (kind, disk) in kinds {
        let mut args = vec!["--socket", "{dir}/vhost.sock", "--cpus", "0"];
        args.extend(disk);
        let target = Target::start_args(&args, &["vhost.sock"]);
        let mut client = target.connect();
        let data = pattern(9, 64 * 1024);
        for round in 0..3u64 {
            client.queue(0).write_ok(round * 65536, &data);
            let share = idle_cpu_share(target.pid(), Duration::from_millis(700));
            let back = client.queue(0).read_ok(round * 65536, 64 * 1024);
            if kind != "null" {
                assert_eq!(back, data, "{kind}: round {round}: data after a sleep");
            }
            println!("{kind}: round {round}: idle CPU {:.2}%", share * 100.0);
            assert!(
                share < 0.15,
                "{kind}: idle target used {:.1}%",
                share * 100.0
            );
        }
    }
}
