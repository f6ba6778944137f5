//! A walk over a pickle's opcodes that checks every length it claims against the bytes left,
//! before burn-store's reader allocates the claim (a 4 GiB `BINUNICODE` in a 100-byte file
//! aborted the process). Opcodes are those of pickle protocols 0–5; an opcode the walk does not
//! know ends it (the reader then reports the file as it sees it).

/// Checks the pickle that starts `bytes` (up to its `STOP`); returns where it ended.
pub(crate) fn check_pickle(bytes: &[u8]) -> Result<usize, String> {
    let mut at = 0usize;
    let need = |at: usize, n: u64, what: &str| -> Result<usize, String> {
        let left = (bytes.len() - at) as u64;
        if n > left {
            return Err(format!(
                "the pickle claims {n} bytes for {what} at byte {at}, but only {left} follow"
            ));
        }
        Ok(at + n as usize)
    };
    let uint = |at: usize, width: usize| -> Result<u64, String> {
        let raw = bytes
            .get(at..at + width)
            .ok_or_else(|| format!("the pickle ends inside an opcode at byte {at}"))?;
        Ok(raw.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64))
    };
    let line = |at: usize| -> Result<usize, String> {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("an unterminated text argument at byte {at}"))?;
        Ok(at + end + 1)
    };
    while at < bytes.len() {
        let op = bytes[at];
        at += 1;
        at = match op {
            b'.' => return Ok(at),
            // No argument.
            b'(' | b'0' | b'1' | b'2' | b'N' | 0x88 | 0x89 | b'}' | b']' | b')' | b't' | 0x85 | 0x86
            | 0x87 | b'a' | b'e' | b's' | b'u' | b'd' | b'l' | b'b' | b'R' | 0x81 | 0x92 | 0x93 | 0x94
            | b'Q' | 0x8f | 0x90 | 0x91 | b'o' | 0x97 | 0x98 => at,
            // Fixed-width arguments.
            b'K' | b'h' | b'q' | 0x80 | 0x82 => need(at, 1, "an argument")?,
            b'M' | 0x83 => need(at, 2, "an argument")?,
            b'J' | b'j' | b'r' | 0x84 => need(at, 4, "an argument")?,
            b'G' => need(at, 8, "a float")?,
            // FRAME: a length the rest must hold, then opcodes as usual.
            0x95 => {
                let n = uint(at, 8)?;
                need(at + 8, n, "a frame")?;
                at + 8
            }
            // Length-prefixed data.
            b'U' | 0x8c | b'C' | 0x8a => {
                let n = uint(at, 1)?;
                need(at + 1, n, "a string")?
            }
            b'T' | b'X' | b'B' | 0x8b => {
                let n = uint(at, 4)?;
                need(at + 4, n, "a string")?
            }
            0x8d | 0x8e | 0x96 => {
                let n = uint(at, 8)?;
                need(at + 8, n, "a string")?
            }
            // Newline-terminated text arguments (GLOBAL and INST take two).
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' => line(at)?,
            b'c' | b'i' => line(line(at)?)?,
            // Unknown: the reader decides.
            _ => return Ok(bytes.len()),
        };
    }
    Ok(at)
}

/// Checks the pickles at the start of a plain or legacy PyTorch file: the first whatever its
/// first byte (the reader takes any file as a pickle), then up to four more that start with
/// `PROTO` (the legacy format's protocol, system info, object and storage keys); the raw
/// storages that follow are not walked. Returns each pickle's bytes.
pub(crate) fn check_pickles(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut at = check_pickle(bytes)?;
    let mut pickles = vec![&bytes[..at]];
    for _ in 0..4 {
        if bytes.get(at) != Some(&0x80) {
            break;
        }
        let end = at + check_pickle(&bytes[at..])?;
        pickles.push(&bytes[at..end]);
        at = end;
    }
    Ok(pickles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_beyond_the_pickle_is_an_error_before_anything_is_allocated() {
        // PROTO 2, BINUNICODE claiming 4 GiB - 1, three bytes, STOP.
        let bad = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'.'];
        let err = check_pickle(&bad).unwrap_err();
        assert!(
            err.contains("4294967295 bytes") && err.contains("only 3 follow"),
            "{err}"
        );
        // The same string with its true length, then STOP.
        let good = [0x80, 2, b'X', 2, 0, 0, 0, b'a', b'b', b'.'];
        assert_eq!(check_pickle(&good), Ok(good.len()));
        // A GLOBAL's two lines, a SHORT_BINBYTES, an 8-byte FRAME.
        let mut framed = vec![0x80, 4, 0x95];
        framed.extend_from_slice(&12u64.to_le_bytes());
        framed.extend_from_slice(b"cmod\nname\nC\x01z.");
        assert_eq!(check_pickle(&framed), Ok(framed.len()));
        framed[3] = 200;
        assert!(check_pickle(&framed).unwrap_err().contains("a frame"));
    }
}
