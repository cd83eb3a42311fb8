//! Recycled activation buffers for the fused training step. A step allocates the same few dozen
//! large buffers every time; fresh ones cost a zero-fill (`calloc`) or, from the kernel, page faults
//! and page clearing, about 7% of the step's CPU time. Buffers the step is done with go back here
//! ([`give`]) and are handed out again ([`take`]) to outputs that are overwritten in full, so their
//! stale contents are never read.

use crate::nn::kernels::Real;
use std::any::Any;
use std::sync::Mutex;

/// The most bytes kept idle; beyond it buffers are freed as usual.
const MAX_BYTES: usize = 1 << 30;
/// Smaller buffers are not kept.
const MIN_BYTES: usize = 4 << 10;

struct Free {
    buffers: Vec<Box<dyn Any + Send>>,
    bytes: usize,
}

static FREE: Mutex<Free> = Mutex::new(Free { buffers: Vec::new(), bytes: 0 });

/// A buffer of `len` values whose contents are unspecified (values left by an earlier use, or
/// zeros): only for outputs that are written in full before they are read.
pub fn take<T: Real>(len: usize) -> Vec<T> {
    match pop::<T>(len) {
        Some(mut v) => {
            // The values already there were written by an earlier use: they stay, and only a part
            // beyond them is zero-filled.
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, T::zero());
            }
            v
        }
        None => vec![T::zero(); len],
    }
}

/// An empty buffer with room for at least `capacity` values (for `extend`).
pub fn take_empty<T: Real>(capacity: usize) -> Vec<T> {
    match pop::<T>(capacity) {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

/// The smallest kept buffer of `T` with room for `capacity` values (and at most twice that).
fn pop<T: Real>(capacity: usize) -> Option<Vec<T>> {
    let mut free = FREE.lock().expect("the buffer pool is never poisoned");
    let (i, cap) = free
        .buffers
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.downcast_ref::<Vec<T>>().map(|v| (i, v.capacity())))
        .filter(|&(_, cap)| cap >= capacity && cap <= capacity.saturating_mul(2))
        .min_by_key(|&(_, cap)| cap)?;
    free.bytes -= cap * std::mem::size_of::<T>();
    free.buffers.swap_remove(i).downcast::<Vec<T>>().ok().map(|b| *b)
}

/// Returns a buffer the caller is done with.
pub fn give<T: Real>(v: Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < MIN_BYTES {
        return; // small buffers come from malloc's own free lists cheaply
    }
    let mut free = FREE.lock().expect("the buffer pool is never poisoned");
    if free.bytes + bytes <= MAX_BYTES {
        free.bytes += bytes;
        free.buffers.push(Box::new(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_asked_length() {
        give(vec![1.5f32; 100_000]);
        let v: Vec<f32> = take(90_000);
        assert_eq!(v.len(), 90_000);
        assert!(v.capacity() >= 90_000);
        let w: Vec<f32> = take(200_000);
        assert_eq!(w.len(), 200_000);
        let e: Vec<f64> = take_empty(10);
        assert!(e.is_empty());
    }
}
