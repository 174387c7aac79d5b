//! CPU lists (`1,3,8-11`) and pinning, shared by spinblk-bench and spinblk-linkprobe.

/// A list of CPU ids, e.g. `1,3,8-11`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses a CPU list such as `1`, `0,2`, `4-7`, `0,8-11`.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    // The kernel's CPU set size as libc sees it: `core_affinity` panics on a CPU id past it.
    const MAX_CPU: usize = libc::CPU_SETSIZE as usize;
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("invalid CPU list '{s}': empty entry"));
        }
        let parse_one = |x: &str| -> Result<usize, String> {
            let v: usize = x
                .trim()
                .parse()
                .map_err(|_| format!("invalid CPU list '{s}': '{x}' is not a CPU number"))?;
            if v >= MAX_CPU {
                return Err(format!("invalid CPU list '{s}': CPU {v} out of range"));
            }
            Ok(v)
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse_one(lo)?, parse_one(hi)?);
                if lo > hi {
                    return Err(format!(
                        "invalid CPU list '{s}': range {lo}-{hi} is reversed"
                    ));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(parse_one(part)?),
        }
    }
    Ok(CpuList(cpus))
}

/// Pins the calling thread to `cpu` (an id from [`parse_cpu_list`], so below the CPU set size
/// that `core_affinity` indexes).
pub fn pin(cpu: usize) -> Result<(), String> {
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
        assert_eq!(parse_cpu_list("1023"), Ok(CpuList(vec![1023])));
        assert!(parse_cpu_list("1024").is_err(), "past the CPU set size");
        for bad in ["", "a", "1,", "3-1", "1-", "-1", "99999999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
