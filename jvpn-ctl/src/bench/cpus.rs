//! CPU lists (`0,1`, `0-3`, `0-1,6`) and pinning a thread to one CPU.

use super::BenchError;

/// Parses a CPU list: comma-separated CPUs and inclusive ranges, each CPU once.
pub fn parse(list: &str) -> Result<Vec<usize>, BenchError> {
    let bad = |detail: String| BenchError::BadCpuList {
        list: list.to_string(),
        detail,
    };
    let num = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| bad(format!("`{}` is not a CPU number", s.trim())))
    };
    let mut cpus = Vec::new();
    for part in list.split(',') {
        if part.trim().is_empty() {
            return Err(bad("empty entry".into()));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let c = num(part)?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(bad(format!("range {lo}-{hi} runs backwards")));
        }
        if hi >= libc::CPU_SETSIZE as usize {
            return Err(bad(format!("CPU {hi} is beyond the largest CPU number")));
        }
        for c in lo..=hi {
            if cpus.contains(&c) {
                return Err(bad(format!("CPU {c} is listed twice")));
            }
            cpus.push(c);
        }
    }
    Ok(cpus)
}

/// The CPUs this process may run on.
pub fn allowed() -> Result<Vec<usize>, BenchError> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(BenchError::Io {
            what: "reading the CPU affinity".into(),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: index within the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Checks that every CPU of `cpus` is one this process may use.
pub fn check_allowed(cpus: &[usize]) -> Result<(), BenchError> {
    let allowed = allowed()?;
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(&cpu) => Err(BenchError::CpuUnavailable {
            cpu,
            allowed: format(&allowed),
        }),
        None => Ok(()),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), BenchError> {
    set_current_thread(&[cpu])
}

/// Lets the calling thread run on `cpus` (e.g. every CPU it had at the start, after
/// something pinned it: threads it spawns inherit its set).
pub fn set_current_thread(cpus: &[usize]) -> Result<(), BenchError> {
    // SAFETY: as in `allowed`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` < CPU_SETSIZE (checked by `parse`, or read by `allowed`).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(BenchError::Io {
            what: format!("setting a thread's CPUs to {}", format(cpus)),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Formats CPUs as a list with ranges: `0-3,6`.
pub fn format(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse("0").unwrap(), [0]);
        assert_eq!(parse("0,1").unwrap(), [0, 1]);
        assert_eq!(parse("0-3").unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse("4, 0-1 ,7").unwrap(), [4, 0, 1, 7]);
        assert_eq!(format(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format(&[]), "");
    }

    #[test]
    fn bad_lists_say_why() {
        for (list, why) in [
            ("", "empty entry"),
            ("0,", "empty entry"),
            ("a", "`a` is not a CPU number"),
            ("1-", "`` is not a CPU number"),
            ("-1", "`` is not a CPU number"),
            ("3-1", "runs backwards"),
            ("0,0", "CPU 0 is listed twice"),
            ("0-2,1", "CPU 1 is listed twice"),
            ("99999", "beyond the largest"),
        ] {
            let e = parse(list).unwrap_err().to_string();
            assert!(e.contains(why), "{list}: {e}");
            assert!(e.contains(&format!("`{list}`")), "{list}: {e}");
        }
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let a = allowed().unwrap();
        assert!(!a.is_empty());
        check_allowed(&a).unwrap();
        assert!(check_allowed(&[libc::CPU_SETSIZE as usize - 1]).is_err());
    }
}
