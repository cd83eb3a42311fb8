//! Recycled activation buffers for the fused training step. A step allocates the same few dozen
//! large buffers every time; fresh ones cost a zero-fill (`calloc`) or, from the kernel, page faults
//! and page clearing, about 7% of the step's CPU time. Buffers the step is done with go back here
//! ([`give`]) and are handed out again ([`take`]) to outputs that are overwritten in full, so their
//! stale contents are never read.

use crate::nn::kernels::Real;
use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

/// The most bytes kept idle; beyond it buffers are freed as usual.
const MAX_BYTES: usize = 1 << 30;
/// Smaller buffers are not kept.
const MIN_BYTES: usize = 4 << 10;
/// The most buffers kept per element type and power-of-two size class; the oldest go first. Some
/// buffers come back more often than they are asked for (outputs allocated elsewhere and handed
/// back), and without a bound they would pile up over a long run, each one searched at every take.
const PER_CLASS: usize = 256;

/// Idle buffers by element type and size class (⌊log₂ capacity⌋), oldest first.
struct Free {
    classes: HashMap<(TypeId, u32), VecDeque<Box<dyn Any + Send>>>,
    bytes: usize,
}

static FREE: LazyLock<Mutex<Free>> = LazyLock::new(|| Mutex::new(Free { classes: HashMap::new(), bytes: 0 }));

fn class(capacity: usize) -> u32 {
    capacity.max(1).ilog2()
}

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

/// The smallest kept buffer of `T` with room for `capacity` values (and at most twice that): it is
/// in the size class of `capacity` or the next.
fn pop<T: Real>(capacity: usize) -> Option<Vec<T>> {
    let mut free = FREE.lock().expect("the buffer pool is never poisoned");
    let fits = |cap: usize| cap >= capacity && cap <= capacity.saturating_mul(2);
    let (key, i, cap) = (class(capacity)..=class(capacity) + 1)
        .filter_map(|c| {
            let key = (TypeId::of::<T>(), c);
            let found = free.classes.get(&key)?.iter().enumerate().filter_map(|(i, b)| {
                let cap = b.downcast_ref::<Vec<T>>()?.capacity();
                fits(cap).then_some((key, i, cap))
            });
            found.min_by_key(|&(_, _, cap)| cap)
        })
        .min_by_key(|&(_, _, cap)| cap)?;
    free.bytes -= cap * std::mem::size_of::<T>();
    let buffer = free.classes.get_mut(&key)?.remove(i)?;
    buffer.downcast::<Vec<T>>().ok().map(|b| *b)
}

/// Returns a buffer the caller is done with.
pub fn give<T: Real>(v: Vec<T>) {
    let size = std::mem::size_of::<T>();
    let bytes = v.capacity() * size;
    if bytes < MIN_BYTES {
        return; // small buffers come from malloc's own free lists cheaply
    }
    let mut free = FREE.lock().expect("the buffer pool is never poisoned");
    if free.bytes + bytes > MAX_BYTES {
        return;
    }
    let Free { classes, bytes: kept } = &mut *free;
    let queue = classes.entry((TypeId::of::<T>(), class(v.capacity()))).or_default();
    queue.push_back(Box::new(v));
    *kept += bytes;
    if queue.len() > PER_CLASS {
        if let Some(old) = queue.pop_front().and_then(|b| b.downcast::<Vec<T>>().ok()) {
            *kept -= old.capacity() * size;
        }
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

    #[test]
    fn a_size_never_asked_for_does_not_pile_up() {
        let len = 1_031; // a size no other test uses (4 KiB of f32)
        for _ in 0..PER_CLASS + 50 {
            give(vec![0f32; len]);
        }
        let kept = |free: &Free| free.classes.get(&(TypeId::of::<f32>(), class(len))).map_or(0, |q| q.len());
        assert!(kept(&FREE.lock().unwrap()) <= PER_CLASS);
        let v: Vec<f32> = take(len);
        assert_eq!(v.capacity(), len, "a kept buffer of the size is handed out");
    }
}
