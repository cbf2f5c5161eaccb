//! Key ranges shared by the backends: a prefix and the first key past it.

/// The smallest byte string greater than every byte string that starts with `prefix`, or `None`
/// when no such bound exists (the prefix is empty or all `0xFF`), meaning "to the end".
///
/// Keys are UTF-8, whose bytes never exceed `0xF4`, so for real keys the bound always exists
/// once the prefix is non-empty.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An upper bound above every UTF-8 key (UTF-8 never contains the byte `0xFF`).
pub(crate) const ABOVE_ALL_KEYS: &[u8] = &[0xFF];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xFF"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xFF\xFF"), None);
    }
}
