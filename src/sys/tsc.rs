//! The CPU's time-stamp counter, read without a system call, where it runs at a constant rate
//! through every power state (x86-64's "invariant TSC").
//!
//! The workers' loop reads the time once a turn. Where the kernel offers a vDSO clock that is
//! cheap; where it does not (user-mode Linux, the guest lab's kernel) every
//! `clock_gettime` is a system call, as dear as the transfers themselves. `engine/clock.rs`
//! turns this counter into an `Instant`, calibrated against and checked by the real clock.

/// Whether this CPU has a counter that [`read`] may use: x86-64 with the invariant TSC flag
/// (CPUID leaf 0x8000_0007, EDX bit 8). Elsewhere false, and the engine reads the real clock.
pub(crate) fn invariant() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID exists on every x86-64 CPU and only reports; the extended leaf is
        // asked for only when the highest extended leaf says it exists. (The intrinsic is a
        // safe function on newer compilers, hence the allow.)
        #[allow(unused_unsafe)]
        unsafe {
            let highest = core::arch::x86_64::__cpuid(0x8000_0000).eax;
            highest >= 0x8000_0007 && core::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The counter's value now; 0 where [`invariant`] is false.
pub(crate) fn read() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86-64 CPU, reads a register and touches no memory.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invariant_counter_never_runs_backward_on_one_thread() {
        if !invariant() {
            return;
        }
        let mut last = read();
        for _ in 0..1000 {
            let now = read();
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
    }
}
