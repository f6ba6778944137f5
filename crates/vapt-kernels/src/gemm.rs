//! Matrix products into vapt's own output buffers (Flex only), shared by the linear layer
//! (`linear.rs`) and the attention core (`attention.rs`).
//!
//! Flex's `matmul` zero-fills every output and then copies it once more to realign the buffer.
//! Here a product is written once, straight into its destination (which may be a column block of
//! a larger buffer, or accumulate onto a starting value), through the `gemm` crate as Flex's are.

use burn::backend::flex::FlexTensor;

/// A strided, read-only f32 matrix view: element `(i, j)` at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix with row stride `rs`, starting at `off`.
    pub(crate) fn rows(data: &'a [f32], off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        let m = Self {
            data,
            off,
            rows,
            cols,
            rs,
            cs: 1,
        };
        assert!(m.fits(data.len()), "matrix view out of its buffer");
        m
    }

    /// The transpose (a view: strides swapped).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside a buffer of `len` elements.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);

// SAFETY: every use writes a set of elements no other task touches (one column block per head,
// or one row block per task), inside an allocation that outlives the parallel section.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub(crate) fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// `dst (rows a.rows × cols b.cols, row stride dst_rs, column stride 1) = [dst +] a·b`.
///
/// # Safety
/// `dst` must be valid for writes (and reads when `accumulate`) of every element of that
/// `a.rows × b.cols` view, and no other thread may access those elements during the call. Without
/// `accumulate` the elements are only written (gemm does not read `dst` when `read_dst` is false),
/// so they may be uninitialised.
pub(crate) unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    a: Mat,
    b: Mat,
    accumulate: bool,
    parallel: bool,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of the dst view, per the caller's contract.
                unsafe { std::ptr::write_bytes(dst.add(i * dst_rs), 0, n) };
            }
        }
        return;
    }
    // Flex's threshold: below ~192³ multiply-adds one thread is faster.
    let parallelism = if parallel && m * n * k >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `a` and `b` were checked to lie inside their slices (`Mat::rows` asserts, `t` keeps
    // the same elements); `dst` per the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A fresh `len`-element buffer that `write` fills completely through the raw pointer it gets.
///
/// # Safety
/// `write` must initialise all `len` elements.
pub(crate) unsafe fn filled(len: usize, write: impl FnOnce(Out)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    write(Out(v.spare_capacity_mut().as_mut_ptr().cast()));
    // SAFETY: all `len` elements were written, per the contract.
    unsafe { v.set_len(len) };
    v
}

pub(crate) fn dims(t: &FlexTensor) -> &[usize] {
    t.layout().shape().as_slice()
}
