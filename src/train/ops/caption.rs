//! PixArt's caption projection (`y_embedder`), `y = gelu(c W1ᵀ + b1) W2ᵀ + b2`, on raw values forward
//! and backward for the CPU training path. Its first product, from the T5 width (4096) to the model
//! width, is the largest outside the blocks; through candle's autograd its backward (weight gradient,
//! zero-filled gradient buffers added into, GELU, the join with the adaLN input) took about 25 ms of
//! a 0.4 s step of the benchmark model, by hand about 10.

use super::block::{col_sums, dy_w, dyt_x, linear, product, rows};
use super::pool::{give, take};
use crate::nn::kernels::{gelu_grad_row, gelu_row, Real};

/// The projection's weights: `linear_1` `[C, K]` and its bias `[C]`, `linear_2` `[C, C]` and its bias.
pub struct CaptionWeights<'a, T> {
    /// `linear_1.weight`.
    pub w1: &'a [T],
    /// `linear_1.bias`.
    pub b1: &'a [T],
    /// `linear_2.weight`.
    pub w2: &'a [T],
    /// `linear_2.bias`.
    pub b2: &'a [T],
}

/// What the backward reads: the first product's output and its GELU.
pub struct CaptionTape<T> {
    h: Vec<T>,
    g: Vec<T>,
}

/// `y` `[R, C]` for the captions `c` `[R, K]`, and the tape for [`caption_backward`].
pub fn caption_forward<T: Real + 'static>(c: &[T], w: &CaptionWeights<T>, r: usize) -> (Vec<T>, CaptionTape<T>) {
    let width = w.b1.len();
    let h = linear(c, w.w1, w.b1, None, (r, c.len() / r.max(1)));
    let mut g = take(r * width); // every row written
    rows(&mut g, width, |i, out| gelu_row(&h[i * width..(i + 1) * width], out));
    let y = linear(&g, w.w2, w.b2, None, (r, width));
    (y, CaptionTape { h, g })
}

/// The weights' gradients `[dW1, db1, dW2, db2]` for the output gradient `dy` `[R, C]` (the captions
/// get none: they are data).
pub fn caption_backward<T: Real + 'static>(
    tape: CaptionTape<T>,
    c: &[T],
    w: &CaptionWeights<T>,
    dy: &[T],
) -> [Vec<T>; 4] {
    let width = w.b2.len();
    let r = dy.len() / width;
    let k = c.len() / r.max(1);
    let (mut dw2, mut db2) = (vec![T::zero(); width * width], vec![T::zero(); width]);
    let mut dg = take(r * width); // written in full by the product
    rayon::join(
        || {
            dyt_x(&mut dw2, dy, &tape.g, (r, width, width));
            col_sums(&mut db2, dy, width);
        },
        || dy_w(&mut dg, false, dy, w.w2, (r, width, width)),
    );
    let h = &tape.h;
    rows(&mut dg, width, |i, d| gelu_grad_row(&h[i * width..(i + 1) * width], d));
    let (mut dw1, mut db1) = (vec![T::zero(); width * k], vec![T::zero(); width]);
    // dW1 = dHᵀ c on both threads.
    product(true, (width, k, r), &mut dw1, false, (&dg, width as isize, 1), (c, 1, k as isize));
    col_sums(&mut db1, &dg, width);
    for v in [dg, tape.h, tape.g] {
        give(v);
    }
    [dw1, db1, dw2, db2]
}
