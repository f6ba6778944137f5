//! The one place where a Burn backend is recognised: the Flex / `Autodiff<Flex>` dispatch that
//! every kernel goes through, and the helpers the kernels share.
//!
//! [`apply_n`] (and its one-, two- and three-input forms) checks by `TypeId` whether the tensors'
//! primitive is Flex's (plain or under autodiff), moves it out of the generic tensor (an `Any`
//! downcast, no copy), runs a slice kernel and, under autodiff, registers the kernel's own
//! backward for the inputs that are tracked. On every other backend, dtype or layout the inputs are
//! handed back unchanged and the caller runs Burn's own ops.

use std::any::Any;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::Autodiff;
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

type AdTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// Elements per parallel task of the element-wise kernels.
pub(crate) const CHUNK: usize = 1 << 14;

/// Moves `a` into a `T` when they are the same type; gives it back otherwise.
fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let mut slot = Some(a);
    if let Some(t) = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
    {
        return Ok(t);
    }
    match slot {
        Some(a) => Err(a),
        None => unreachable!("the slot is emptied only by a successful downcast"),
    }
}

pub(crate) fn serves<B: Backend>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<B::FloatTensorPrimitive>();
    t == TypeId::of::<FlexTensor>() || t == TypeId::of::<AdTensor>()
}

/// Contiguous f32 slice of a Flex tensor, if it has one.
pub(crate) fn f32_slice(t: &FlexTensor) -> Option<&[f32]> {
    if t.dtype() != DType::F32 {
        return None;
    }
    t.as_slice::<f32>()
}

/// The values of a tensor that is contiguous f32 by construction (a kernel's output or state,
/// or a gradient after [`dense`]).
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    f32_slice(t).unwrap_or_else(|| unreachable!("kernel tensors are contiguous f32"))
}

/// A Flex tensor owning `data` (no copy).
pub(crate) fn tensor(data: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(data, shape))
}

/// The element-wise sum of per-task partial sums (each `len` long), added in task order: the
/// same rounding on every run, however rayon split the work.
pub(crate) fn sum_partials(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

pub(crate) fn new_like(t: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    tensor(data, t.layout().shape().clone())
}

pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// Defines `fn $name(..)` that runs `$body` compiled for AVX-512F, for AVX2 + FMA, or for the
/// baseline, whichever is the widest the CPU offers (checked at run time; cached by std).
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($p:ident: $t:ty),* $(,)?) $body:block) => {
        $vis fn $name($($p: $t),*) {
            #[inline(always)]
            fn body($($p: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn v4($($p: $t),*) {
                body($($p),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3($($p: $t),*) {
                body($($p),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { v4($($p),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { v3($($p),*) };
                }
            }
            body($($p),*)
        }
    };
}
pub(crate) use multiversion;

/// Rows per parallel task of the row-wise kernels: about `CHUNK` elements.
pub(crate) fn rows_per_task(len: usize) -> usize {
    (CHUNK / len.max(1)).max(1)
}

#[allow(clippy::type_complexity)]
pub(crate) fn apply3<B, const D0: usize, const D1: usize, const D2: usize, const DO: usize, S, BO>(
    (x0, x1, x2): (Tensor<B, D0>, Tensor<B, D1>, Tensor<B, D2>),
    kernel: impl Fn(&FlexTensor, &FlexTensor, &FlexTensor) -> Option<(FlexTensor, S)>,
    op: BO,
) -> Result<Tensor<B, DO>, (Tensor<B, D0>, Tensor<B, D1>, Tensor<B, D2>)>
where
    B: Backend,
    S: Clone + Send + std::fmt::Debug + 'static,
    BO: Backward<Flex, 3, State = S>,
{
    match apply_n::<B, 3, S, BO>(
        [prim(x0), prim(x1), prim(x2)],
        dense,
        |[a, b, c]| kernel(a, b, c),
        op,
    ) {
        Ok(y) => Ok(rebuild(y)),
        Err([a, b, c]) => Err((rebuild(a), rebuild(b), rebuild(c))),
    }
}

/// [`apply_n`] for one input, after `prepare` (usually [`dense`]).
pub(crate) fn apply1<B, const D: usize, const DO: usize, S, BO>(
    x: Tensor<B, D>,
    prepare: impl Fn(FlexTensor) -> FlexTensor,
    kernel: impl Fn(&FlexTensor) -> Option<(FlexTensor, S)>,
    op: BO,
) -> Result<Tensor<B, DO>, Tensor<B, D>>
where
    B: Backend,
    S: Clone + Send + std::fmt::Debug + 'static,
    BO: Backward<Flex, 1, State = S>,
{
    match apply_n::<B, 1, S, BO>([prim(x)], prepare, |[a]| kernel(a), op) {
        Ok(y) => Ok(rebuild(y)),
        Err([a]) => Err(rebuild(a)),
    }
}

/// The two-input form of [`apply`] (see [`apply_n`]).
#[allow(clippy::type_complexity)]
pub(crate) fn apply2<B, const D0: usize, const D1: usize, const DO: usize, S, BO>(
    (x0, x1): (Tensor<B, D0>, Tensor<B, D1>),
    kernel: impl Fn(&FlexTensor, &FlexTensor) -> Option<(FlexTensor, S)>,
    op: BO,
) -> Result<Tensor<B, DO>, (Tensor<B, D0>, Tensor<B, D1>)>
where
    B: Backend,
    S: Clone + Send + std::fmt::Debug + 'static,
    BO: Backward<Flex, 2, State = S>,
{
    match apply_n::<B, 2, S, BO>([prim(x0), prim(x1)], dense, |[a, b]| kernel(a, b), op) {
        Ok(y) => Ok(rebuild(y)),
        Err([a, b]) => Err((rebuild(a), rebuild(b))),
    }
}

/// Prepares `N` primitives (e.g. [`dense`]), runs `kernel` (which returns the output and the backward state) on
/// Flex or Autodiff<Flex> and, under autodiff, registers `op` for the inputs that are tracked;
/// gives the primitives back on any other backend or when the kernel declines.
fn apply_n<B, const N: usize, S, BO>(
    prims: [B::FloatTensorPrimitive; N],
    prepare: impl Fn(FlexTensor) -> FlexTensor,
    kernel: impl Fn([&FlexTensor; N]) -> Option<(FlexTensor, S)>,
    op: BO,
) -> Result<B::FloatTensorPrimitive, [B::FloatTensorPrimitive; N]>
where
    B: Backend,
    S: Clone + Send + std::fmt::Debug + 'static,
    BO: Backward<Flex, N, State = S>,
{
    if !serves::<B>() {
        return Err(prims);
    }
    let flex = prims.map(cast::<_, FlexTensor>);
    if flex.iter().all(Result::is_ok) {
        let ts = flex.map(|r| prepare(r.unwrap_or_else(|_| unreachable!("all inputs are Flex"))));
        return match kernel(ts.each_ref()) {
            Some((y, _)) => Ok(back(y)),
            None => Err(ts.map(back)),
        };
    }
    let ad = flex.map(unify).map(cast::<_, AdTensor>);
    if !ad.iter().all(Result::is_ok) {
        return Err(ad.map(unify_ad));
    }
    let ad = ad.map(|r| {
        let mut t = r.unwrap_or_else(|_| unreachable!("all inputs are Autodiff<Flex>"));
        t.primitive = prepare(t.primitive);
        t
    });
    let Some((y, state)) = kernel(ad.each_ref().map(|t| &t.primitive)) else {
        return Err(ad.map(back));
    };
    let nodes = ad.each_ref().map(|t| t.node.clone());
    let out = match op.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(back(out))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    // A quantized tensor is dequantized here, as Burn's own LayerNorm does.
    t.into_primitive().tensor()
}

fn rebuild<B: Backend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// A primitive that was (maybe) cast to `FlexTensor`, as the original type again.
fn unify<P: 'static>(r: Result<FlexTensor, P>) -> P {
    r.map_or_else(|p| p, back)
}

/// A primitive that was (maybe) cast to the autodiff tensor, as the original type again.
fn unify_ad<P: 'static>(r: Result<AdTensor, P>) -> P {
    r.map_or_else(|p| p, back)
}

/// The elements of a view with shape `dims` and element strides `strides` (from `base`) in
/// row-major order: whole rows copied when the last stride is 1.
pub(crate) fn gather4(src: &[f32], base: usize, dims: [usize; 4], strides: [usize; 4]) -> Vec<f32> {
    let [a, b, c, d] = dims;
    let [s0, s1, s2, s3] = strides;
    let mut out = zeroed(a * b * c * d);
    if d == 0 {
        return out;
    }
    let rows_per = rows_per_task(d);
    out.par_chunks_mut(rows_per * d)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (k, row) in chunk.chunks_exact_mut(d).enumerate() {
                let r = task * rows_per + k;
                let (ia, rem) = (r / (b * c), r % (b * c));
                let (ib, ic) = (rem / c, rem % c);
                let start = base + ia * s0 + ib * s1 + ic * s2;
                if s3 == 1 {
                    row.copy_from_slice(&src[start..start + d]);
                } else {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = src[start + j * s3];
                    }
                }
            }
        });
    out
}

/// Shape and strides of an f32 view of rank ≤ 4 with non-negative strides, padded to rank 4.
pub(crate) fn view4(x: &FlexTensor) -> Option<([usize; 4], [usize; 4])> {
    let layout = x.layout();
    let dims = layout.shape().as_slice();
    let st = layout.strides();
    if x.dtype() != DType::F32 || dims.len() > 4 || st.iter().any(|&s| s < 0) {
        return None;
    }
    let pad = 4 - dims.len();
    let (mut d4, mut s4) = ([1usize; 4], [0usize; 4]);
    for i in 0..dims.len() {
        d4[pad + i] = dims[i];
        s4[pad + i] = st[i] as usize;
    }
    Some((d4, s4))
}

/// `t` with its own contiguous buffer (a row copy for strided views; Flex's copy otherwise).
pub(crate) fn dense(t: FlexTensor) -> FlexTensor {
    if t.dtype() != DType::F32 || f32_slice(&t).is_some() {
        return t;
    }
    match view4(&t) {
        Some((d4, s4)) => {
            let data = gather4(t.storage(), t.layout().start_offset(), d4, s4);
            new_like(&t, data)
        }
        None => t.to_contiguous(),
    }
}

/// The inverse cast, for a value that came from `B::FloatTensorPrimitive`.
fn back<T: 'static, P: 'static>(t: T) -> P {
    match cast::<T, P>(t) {
        Ok(p) => p,
        Err(_) => unreachable!("the primitive was downcast from this type"),
    }
}

/// The dimensions of a rank-3 tensor.
pub(crate) fn dims3(t: &FlexTensor) -> Option<[usize; 3]> {
    match t.layout().shape().as_slice() {
        &[b, t, d] => Some([b, t, d]),
        _ => None,
    }
}
