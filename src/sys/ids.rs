//! Copying a block set's ids while finding the highest: the one per-block step of
//! `prepare_blocks`, run over every id of a KV transfer (16,384 of them for 32 layers
//! of 256 pages).
//!
//! The baseline x86-64 target has no unsigned 32-bit maximum instruction (SSE4.1's
//! `pmaxud`), so the portable loop's emulated maximum made it compute-bound (7 µs for
//! 32,768 ids on the development machine). Where the CPU has AVX2 (detected once at
//! run time, cached by the standard library), the same loop is compiled for it: eight
//! ids per instruction.

// Unsafe code: calling a function compiled for a CPU feature detected at run time
// (the crate root denies it elsewhere).
#![allow(unsafe_code)]

/// Copies `from` into `to` (the same length) and returns the highest id (0 if empty).
#[inline]
pub(crate) fn copy_max(to: &mut [u32], from: &[u32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (just detected).
        return unsafe { copy_max_avx2(to, from) };
    }
    copy_max_portable(to, from)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn copy_max_avx2(to: &mut [u32], from: &[u32]) -> u32 {
    copy_max_portable(to, from)
}

#[inline(always)]
fn copy_max_portable(to: &mut [u32], from: &[u32]) -> u32 {
    let mut top = 0;
    for (to, &id) in to.iter_mut().zip(from) {
        *to = id;
        top = top.max(id);
    }
    top
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_and_finds_the_highest() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 1000] {
            let from: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761) >> 3).collect();
            let mut to = vec![0; n];
            assert_eq!(super::copy_max(&mut to, &from), from.iter().copied().max().unwrap_or(0));
            assert_eq!(to, from);
        }
        let mut to = [0; 3];
        assert_eq!(
            super::copy_max(&mut to, &[1, u32::MAX, 2]),
            u32::MAX,
            "unsigned, not signed"
        );
    }
}
