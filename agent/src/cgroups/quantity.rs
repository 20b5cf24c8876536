//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1e3`, `2G`), parsed exactly.
//!
//! A quantity is kept as `mantissa × 10^exp10 × 2^exp2` so conversions are exact and round the
//! way `resource.Quantity` does (`Value()` and `MilliValue()` round up towards +∞).

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {value:?}: {reason}")]
pub struct QuantityError {
    pub value: String,
    pub reason: &'static str,
}

/// An exactly parsed quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

const MAX_DIGITS: usize = 30;

/// Parses a Kubernetes quantity string.
pub fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    let err = |reason| QuantityError { value: s.to_string(), reason };
    let t = s.trim();
    if t.is_empty() {
        return Err(err("empty"));
    }
    let (negative, body) = match t.as_bytes()[0] {
        b'+' => (false, &t[1..]),
        b'-' => (true, &t[1..]),
        _ => (false, t),
    };
    let num_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, suffix) = body.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => {
            if f.contains('.') {
                return Err(err("more than one decimal point"));
            }
            (i, f)
        }
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("no digits"));
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > MAX_DIGITS {
        return Err(err("too many digits"));
    }
    let mut mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| err("bad digits"))? };
    if negative {
        mantissa = -mantissa;
    }
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| err("too many digits"))?;
    let (exp10, exp2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let exp = other.strip_prefix(['e', 'E']).ok_or_else(|| err("unknown suffix"))?;
            let digits = exp.trim_start_matches(['+', '-']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || exp.len() - digits.len() > 1 {
                return Err(err("unknown suffix"));
            }
            let e: i32 = exp.parse().map_err(|_| err("exponent out of range"))?;
            if !(-60..=60).contains(&e) {
                return Err(err("exponent out of range"));
            }
            (e, 0)
        }
    };
    Ok(Quantity { mantissa, exp10: exp10 - frac_len, exp2 })
}

impl Quantity {
    /// The value scaled by `10^scale`, rounded up, saturated to the i64 range.
    fn scaled_ceil(&self, scale: i32) -> i64 {
        let mut n = self.mantissa;
        for _ in 0..self.exp2 {
            n = n.saturating_mul(2);
        }
        let e = self.exp10 + scale;
        let v = if e >= 0 {
            let mut v = n;
            for _ in 0..e {
                v = v.saturating_mul(10);
            }
            v
        } else {
            let d = 10i128.checked_pow(e.unsigned_abs()).unwrap_or(i128::MAX);
            let q = n.div_euclid(d);
            if n.rem_euclid(d) != 0 { q + 1 } else { q }
        };
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }

    /// The integer value, rounded up (`resource.Quantity.Value()`), e.g. bytes for memory.
    pub fn value(&self) -> i64 {
        self.scaled_ceil(0)
    }

    /// The value in thousandths, rounded up (`MilliValue()`), e.g. millicores for cpu.
    pub fn milli_value(&self) -> i64 {
        self.scaled_ceil(3)
    }

    /// True if the quantity is strictly positive.
    pub fn is_positive(&self) -> bool {
        self.mantissa > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        parse_quantity(s).expect("valid quantity")
    }

    #[test]
    fn cpu_quantities_to_millis() {
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("1").milli_value(), 1000);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q(".25").milli_value(), 250);
        assert_eq!(q("2.").milli_value(), 2000);
        // Sub-milli values round up like MilliValue().
        assert_eq!(q("1u").milli_value(), 1);
        assert_eq!(q("0.0001").milli_value(), 1);
    }

    #[test]
    fn memory_quantities_to_bytes() {
        assert_eq!(q("128Mi").value(), 128 << 20);
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("64k").value(), 64_000);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E3").value(), 1000);
        assert_eq!(q("5e-1").milli_value(), 500);
        assert_eq!(q("2E").value(), 2_000_000_000_000_000_000);
        assert_eq!(q("100m").value(), 1);
        assert_eq!(q("0").value(), 0);
        assert_eq!(q("-1").value(), -1);
        assert!(!q("0").is_positive());
        assert!(q("1m").is_positive());
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(q("100Ei").value(), i64::MAX);
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        for bad in ["", "m", "abc", "1.2.3", "1Qi", "1e", "1e+-3", "12 Mi", "1ee3", "--1", "1e99"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
