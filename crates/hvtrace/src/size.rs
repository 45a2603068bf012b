//! Byte sizes on the command line: `4096`, `4k`, `256KiB`, `4M`.

/// Parses a size with an optional k/M/G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 4096, 4k, 256KiB, 4M)"))?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} in {s:?} (use k, M or G)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("4k"), Ok(4096));
        assert_eq!(super::parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(super::parse_size("4M"), Ok(4 << 20));
        assert!(super::parse_size("4x").is_err());
        assert!(super::parse_size("").is_err());
    }
}
