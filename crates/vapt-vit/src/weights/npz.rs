//! NumPy `.npz` (zip of `.npy`) reading and writing.
//!
//! Google's checkpoints are uncompressed zips of little-endian float32 `.npy` arrays; compressed
//! (`np.savez_compressed`) archives and float64/float16 arrays are read too (converted to f32).

use std::io::{Read, Write};
use std::path::Path;

use super::{LoadError, RawTensor, TensorMap};

/// Parses an npz archive held in memory. `path` is only used in messages.
pub fn parse_npz(path: &Path, bytes: &[u8]) -> Result<TensorMap, LoadError> {
    let format = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format(format!("not a valid npz (zip) archive: {e}")))?;
    let mut map = TensorMap::new(path);
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format(format!("cannot read zip entry #{i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        // Sizes in a zip are claims: checked against the file before allocating, and never read
        // past.
        let size = entry.size();
        entry_fits(&entry, bytes.len()).map_err(|message| LoadError::Entry {
            path: path.to_path_buf(),
            key: key.clone(),
            message: format!("{message}: the file is damaged or not an npz"),
        })?;
        // Deflated entries grow as they decompress: reserve no more than the file's length.
        let mut buf = Vec::with_capacity(size.min(bytes.len() as u64) as usize);
        (&mut entry)
            .take(size.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| LoadError::Entry {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("cannot decompress: {e}"),
            })?;
        if buf.len() as u64 != size {
            return Err(LoadError::Entry {
                path: path.to_path_buf(),
                key,
                message: format!("{} bytes where the archive claims {size}", buf.len()),
            });
        }
        let tensor = parse_npy(&buf).map_err(|message| LoadError::Entry {
            path: path.to_path_buf(),
            key: key.clone(),
            message,
        })?;
        map.insert(key, tensor);
    }
    Ok(map)
}

/// Parses one `.npy` array (format versions 1–3) into float32.
pub fn parse_npy(buf: &[u8]) -> Result<RawTensor, String> {
    if buf.len() < 10 || &buf[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let major = buf[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([buf[8], buf[9]]) as usize, 10),
        2 | 3 => {
            if buf.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = buf
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    let fortran = match fortran.trim() {
        "True" => true,
        "False" => false,
        other => return Err(format!("bad fortran_order `{other}`")),
    };
    let shape_src = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let shape: Vec<usize> = shape_src
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape_src}")))
        .collect::<Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape_src} is too large"))?;
    let body = &buf[start + header_len..];
    let data: Vec<f32> = match descr {
        "<f4" | "|f4" => read_le(body, numel, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))?,
        "<f8" => read_le(body, numel, 8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        })?,
        "<f2" => read_le(body, numel, 2, |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))?,
        other => {
            return Err(format!(
                "dtype `{other}` is not supported (expected little-endian float32, float64 or float16)"
            ))
        }
    };
    let tensor = if fortran && shape.len() > 1 {
        // Fortran order = C order of the reversed shape; permute back.
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let axes: Vec<usize> = (0..shape.len()).rev().collect();
        RawTensor::new(rev, data).permuted(&axes)
    } else {
        RawTensor::new(shape, data)
    };
    Ok(tensor)
}

fn read_le(body: &[u8], numel: usize, width: usize, f: impl Fn(&[u8]) -> f32) -> Result<Vec<f32>, String> {
    let need = numel.saturating_mul(width);
    if body.len() < need {
        return Err(format!(
            "truncated data: {} bytes for {numel} values of {width} bytes",
            body.len()
        ));
    }
    Ok(body[..need].chunks_exact(width).map(f).collect())
}

/// IEEE half → single.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Finds `'key': value` in a Python dict literal and returns the raw value text.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}':");
    let pat_double = format!("\"{key}\":");
    let pos = header
        .find(&pat_single)
        .map(|p| p + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|p| p + pat_double.len()))?;
    let rest = header[pos..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Checks a zip entry's claimed sizes against the archive's length `file_len`: the packed size
/// must lie inside the file and the unpacked size within what it can expand to (itself when
/// stored; deflate expands at most ~1032:1).
pub(crate) fn entry_fits<R: std::io::Read>(
    entry: &zip::read::ZipFile<'_, R>,
    file_len: usize,
) -> Result<(), String> {
    let (size, packed) = (entry.size(), entry.compressed_size());
    let most = if entry.compression() == zip::CompressionMethod::Stored {
        packed
    } else {
        packed.saturating_mul(1032).saturating_add(1024)
    };
    if packed > file_len as u64 || size > most {
        return Err(format!(
            "the archive claims {size} bytes ({packed} compressed) for `{}`, more than a \
             {file_len}-byte file can hold",
            entry.name()
        ));
    }
    Ok(())
}

/// Serialises one float32 array as `.npy` (version 1, C order).
pub fn npy_bytes(t: &RawTensor) -> Vec<u8> {
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, header ends with '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `map` as an uncompressed npz (the layout of Google's checkpoints).
pub fn write_npz(path: &Path, map: &TensorMap) -> Result<(), LoadError> {
    let bytes = npz_bytes(path, map)?;
    std::fs::write(path, bytes).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The bytes of `map` as an uncompressed npz (see [`write_npz`]); `path` names it in errors.
pub fn npz_bytes(path: &Path, map: &TensorMap) -> Result<Vec<u8>, LoadError> {
    let format = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    for (key, t) in &map.tensors {
        zip.start_file(format!("{key}.npy"), options)
            .map_err(|e| format(format!("cannot write zip entry `{key}`: {e}")))?;
        zip.write_all(&npy_bytes(t))
            .map_err(|e| format(format!("cannot write zip entry `{key}`: {e}")))?;
    }
    let cursor = zip
        .finish()
        .map_err(|e| format(format!("cannot finish zip: {e}")))?;
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let t = RawTensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        let back = parse_npy(&npy_bytes(&t)).unwrap();
        assert_eq!(back, t);
        let s = RawTensor::new(vec![4], vec![0.5; 4]);
        assert_eq!(parse_npy(&npy_bytes(&s)).unwrap(), s);
    }

    #[test]
    fn fortran_order_is_permuted_to_c_order() {
        // A 2×3 array [[1,2,3],[4,5,6]] stored column-major: 1,4,2,5,3,6.
        let mut header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }".to_string();
        header.push('\n');
        let mut buf = b"\x93NUMPY\x01\x00".to_vec();
        buf.extend_from_slice(&(header.len() as u16).to_le_bytes());
        buf.extend_from_slice(header.as_bytes());
        for v in [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        let t = parse_npy(&buf).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn rejects_unsupported_dtype_and_truncation() {
        let t = RawTensor::new(vec![2], vec![1.0, 2.0]);
        let mut bytes = npy_bytes(&t);
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at + 1] = b'i';
        assert!(parse_npy(&bytes).unwrap_err().contains("<i4"));
        let good = npy_bytes(&t);
        assert!(parse_npy(&good[..good.len() - 2])
            .unwrap_err()
            .contains("truncated"));
        assert!(parse_npy(b"hello world").unwrap_err().contains("magic"));
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    /// A hand-made zip whose only entry claims 2^62 bytes (zip64 sizes): an error naming the
    /// entry, not an allocation of the claimed size.
    #[test]
    fn a_zip64_size_claim_beyond_the_file_is_an_error() {
        let data = b"\x93NUMPY not really";
        let name = b"w.npy";
        let claim: u64 = 1 << 62;
        let extra = |uncompressed: u64, compressed: u64| {
            let mut e = vec![1u8, 0, 16, 0];
            e.extend_from_slice(&uncompressed.to_le_bytes());
            e.extend_from_slice(&compressed.to_le_bytes());
            e
        };
        let x = extra(claim, data.len() as u64);
        let mut z = Vec::new();
        // Local file header.
        z.extend_from_slice(&0x04034b50u32.to_le_bytes());
        z.extend_from_slice(&[45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(&u32::MAX.to_le_bytes());
        z.extend_from_slice(&u32::MAX.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&(x.len() as u16).to_le_bytes());
        z.extend_from_slice(name);
        z.extend_from_slice(&x);
        z.extend_from_slice(data);
        // Central directory.
        let cd = z.len() as u32;
        z.extend_from_slice(&0x02014b50u32.to_le_bytes());
        z.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(&u32::MAX.to_le_bytes());
        z.extend_from_slice(&u32::MAX.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&(x.len() as u16).to_le_bytes());
        // Comment length, disk, internal and external attributes, local header offset.
        z.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(name);
        z.extend_from_slice(&x);
        let cd_size = z.len() as u32 - cd;
        // End of central directory.
        z.extend_from_slice(&0x06054b50u32.to_le_bytes());
        z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
        z.extend_from_slice(&cd_size.to_le_bytes());
        z.extend_from_slice(&cd.to_le_bytes());
        z.extend_from_slice(&[0, 0]);
        let err = parse_npz(Path::new("crafted.npz"), &z).unwrap_err().to_string();
        assert!(err.contains("crafted.npz"), "{err}");
        assert!(err.contains("claims 4611686018427387904 bytes"), "{err}");
    }

    #[test]
    fn an_npy_shape_too_large_for_memory_is_an_error() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }";
        let mut buf = b"\x93NUMPY\x01\x00".to_vec();
        buf.extend_from_slice(&(header.len() as u16).to_le_bytes());
        buf.extend_from_slice(header.as_bytes());
        let err = parse_npy(&buf).unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }
}
