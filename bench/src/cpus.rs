//! CPU lists (`1,3,8-11`) and pinning, shared by spinblk-bench and spinblk-linkprobe.

/// A list of CPU ids, e.g. `1,3,8-11`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses a CPU list such as `1`, `0,2`, `4-7`, `0,8-11` (spinblk's own parser, as for the
/// target's `--cpus`).
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    spinblk_reactor::parse_cpu_list(s)
        .map(CpuList)
        .map_err(|e| format!("invalid CPU list '{s}': {e}"))
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> Result<(), String> {
    // `core_affinity` indexes a CPU set of this size and panics past it.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is past the CPU set size"));
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(format!("cannot run on CPU {cpu}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Ok(CpuList(vec![1])));
        assert_eq!(parse_cpu_list("0,2"), Ok(CpuList(vec![0, 2])));
        assert_eq!(parse_cpu_list("4-6,1"), Ok(CpuList(vec![4, 5, 6, 1])));
        for bad in ["", "a", "3-1", "1-", "-1", "1,1", "99999999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    /// Past the CPU set size an id is refused, not handed to `core_affinity` (which panics).
    #[test]
    fn pin_refuses_cpus_past_the_set_size() {
        let past = libc::CPU_SETSIZE as usize;
        assert!(pin(past).is_err());
        assert!(pin(65535).is_err());
    }
}
