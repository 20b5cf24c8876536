//! Kubernetes resource quantities (`"100m"`, `"1.5Gi"`, `"1e3"`), parsed the way apimachinery's
//! `resource.ParseQuantity` parses them.
//!
//! `k8s-openapi` keeps a `Quantity` as the raw string from the manifest, but the agent must turn
//! requests and limits into numbers (CPU shares and CFS quota from millicores, memory limits from
//! bytes). If the agent read a quantity differently from the API server, a pod could get a limit
//! other than the one the user sees in `kubectl describe`, so the grammar and the rounding follow
//! apimachinery exactly, quirks included:
//!
//! - grammar: optional sign, digits with an optional fraction (`1`, `1.5`, `.5`, `1.`), then one
//!   suffix: decimal SI (`n u m "" k M G T P E`), binary SI (`Ki Mi Gi Ti Pi Ei`) or a decimal
//!   exponent (`e3`, `E-3`, `e+3`). No whitespace anywhere.
//! - a number made only of zeros (and a lone sign or `.`) is zero whatever follows it, because
//!   apimachinery stops scanning there (`"-"`, `"00"`, `"0Mi"` are all zero);
//! - an exponent is read as an `int64` and then truncated to 32 bits, as upstream does;
//! - conversions round *away from zero* (`MilliValue()` / `Value()`), so `"0.1m"` CPU is 1
//!   millicore and `"1.5"` bytes is 2 bytes, and they saturate at `±i64::MAX` where upstream's
//!   result would no longer fit (upstream caps parsed values at 2^63-1 too).
//!
//! [`parse`] takes the string strictly like `ParseQuantity`; the helpers that take a
//! `k8s_openapi` [`Quantity`] first trim surrounding whitespace, as apimachinery's JSON decoding
//! does before parsing.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error(
        "quantity {input:?} is malformed at byte {pos}: {reason} \
         (expected [+-]<digits>[.<digits>] followed by an SI suffix or an exponent)"
    )]
    Format { input: String, pos: usize, reason: &'static str },
    #[error(
        "quantity {input:?} has unknown suffix {suffix:?} \
         (expected one of n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or e<exponent>)"
    )]
    Suffix { input: String, suffix: String },
}

/// How the suffix scales the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `n u m "" k M G T P E`: times 10^exponent.
    DecimalSi,
    /// `Ki Mi Gi Ti Pi Ei`: times 2^exponent.
    BinarySi,
    /// `e<n>` / `E<n>`: times 10^n.
    DecimalExponent,
}

/// A parsed quantity: `sign × digits × 10^exp10 × 2^exp2`, exact (no rounding has happened yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuantity {
    negative: bool,
    /// Significant decimal digits (numerator and fraction, leading zeros removed; empty = zero).
    digits: Vec<u8>,
    /// Power of ten applied to `digits` (the suffix exponent minus the number of fraction digits).
    exp10: i64,
    /// Power of two applied (binary SI only).
    exp2: u32,
    format: Format,
}

/// Characters apimachinery lets a suffix be made of (before an optional signed exponent).
const SUFFIX_CHARS: &[u8] = b"eEinumkKMGTP";

/// Parses a quantity string exactly like apimachinery's `ParseQuantity`.
pub fn parse(input: &str) -> Result<ParsedQuantity, QuantityError> {
    let s = input.as_bytes();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let mut pos = 0;
    let mut negative = false;
    match s[0] {
        b'-' => {
            negative = true;
            pos = 1;
        }
        b'+' => pos = 1,
        _ => {}
    }
    // Leading zeros; a string of only zeros (after the sign) is zero.
    while pos < s.len() && s[pos] == b'0' {
        pos += 1;
    }
    if pos == s.len() {
        return Ok(ParsedQuantity::zero());
    }
    let num_start = pos;
    while pos < s.len() && s[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = &s[num_start..pos];
    let mut frac: &[u8] = &[];
    if pos < s.len() && s[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < s.len() && s[pos].is_ascii_digit() {
            pos += 1;
        }
        frac = &s[frac_start..pos];
    }
    // The suffix: letters from SUFFIX_CHARS, then an optional sign and digits, then the end.
    let suffix_start = pos;
    while pos < s.len() && SUFFIX_CHARS.contains(&s[pos]) {
        pos += 1;
    }
    if pos < s.len() && (s[pos] == b'-' || s[pos] == b'+') {
        pos += 1;
    }
    while pos < s.len() && s[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < s.len() {
        let reason = if s[pos].is_ascii_whitespace() { "whitespace is not allowed" } else { "unexpected character" };
        return Err(QuantityError::Format { input: input.to_string(), pos, reason });
    }
    let suffix = &input[suffix_start..];
    let (format, exponent) = interpret_suffix(suffix)
        .ok_or_else(|| QuantityError::Suffix { input: input.to_string(), suffix: suffix.to_string() })?;

    let mut digits: Vec<u8> = num.iter().chain(frac.iter()).map(|c| c - b'0').collect();
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    if digits.is_empty() {
        return Ok(ParsedQuantity::zero());
    }
    // `frac.len()` is bounded by the input length, far below i64::MAX.
    let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX);
    let (exp10, exp2) = match format {
        Format::BinarySi => (-frac_len, u32::try_from(exponent).unwrap_or(0)),
        Format::DecimalSi | Format::DecimalExponent => (i64::from(exponent) - frac_len, 0),
    };
    Ok(ParsedQuantity { negative, digits, exp10, exp2, format })
}

/// Maps a suffix to its format and exponent (apimachinery's `suffixHandler.interpret`).
fn interpret_suffix(suffix: &str) -> Option<(Format, i32)> {
    let decimal = match suffix {
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "" => Some(0),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(e) = decimal {
        return Some((Format::DecimalSi, e));
    }
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    if let Some(e) = binary {
        return Some((Format::BinarySi, e));
    }
    let rest = suffix.strip_prefix(['e', 'E'])?;
    if rest.is_empty() {
        return None;
    }
    // Upstream parses an int64 and then converts it to int32, which truncates; do the same.
    let parsed: i64 = rest.parse().ok()?;
    Some((Format::DecimalExponent, parsed as i32))
}

impl ParsedQuantity {
    fn zero() -> Self {
        ParsedQuantity { negative: false, digits: Vec::new(), exp10: 0, exp2: 0, format: Format::DecimalSi }
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    pub fn is_negative(&self) -> bool {
        self.negative && !self.is_zero()
    }

    /// The suffix family the quantity was written with.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The value in units of 10^-`scale`, rounded away from zero, saturating at `±i64::MAX`
    /// (apimachinery's `ScaledValue(-scale)`).
    pub fn scaled_value(&self, scale: i32) -> i64 {
        if self.is_zero() {
            return 0;
        }
        let magnitude = ceil_magnitude(&self.digits, self.exp10.saturating_add(i64::from(scale)), self.exp2);
        if self.negative { -magnitude } else { magnitude }
    }

    /// The value in thousandths, rounded away from zero: CPU millicores (apimachinery's `MilliValue()`).
    pub fn milli_value(&self) -> i64 {
        self.scaled_value(3)
    }

    /// The value in units, rounded away from zero: bytes for memory (apimachinery's `Value()`).
    pub fn value(&self) -> i64 {
        self.scaled_value(0)
    }
}

/// ceil(digits × 10^exp10 × 2^exp2), saturating at i64::MAX. `digits` has no leading zero and
/// is not empty.
fn ceil_magnitude(digits: &[u8], exp10: i64, exp2: u32) -> i64 {
    let n = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // The value is at least 10^(n-1+exp10); 10^19 already exceeds i64::MAX.
    if n.saturating_sub(1).saturating_add(exp10) >= 19 {
        return i64::MAX;
    }
    // The value is below 10^(n+exp10) × 2^60 < 10^(n+exp10+19); if that is ≤ 1 the ceiling is 1.
    if n.saturating_add(exp10).saturating_add(19) <= 0 {
        return 1;
    }
    let mut big = BigUint::from_digits(digits);
    // 2^exp2 in steps that fit a u32 multiplier (exp2 ≤ 60).
    let mut rest = exp2;
    while rest > 0 {
        let step = rest.min(31);
        big.mul_small(1u32 << step);
        rest -= step;
    }
    let mut inexact = false;
    if exp10 >= 0 {
        for _ in 0..exp10 {
            big.mul_small(10);
        }
    } else {
        for _ in 0..(-exp10) {
            inexact |= big.div_small(10) != 0;
        }
    }
    match big.to_u64().and_then(|v| i64::try_from(v).ok()) {
        Some(v) if inexact => v.saturating_add(1),
        Some(v) => v,
        None => i64::MAX,
    }
}

/// Just enough of an unsigned big integer for exact scaling: little-endian base-2^32 limbs.
struct BigUint(Vec<u32>);

impl BigUint {
    fn from_digits(digits: &[u8]) -> Self {
        let mut big = BigUint(Vec::new());
        for d in digits {
            big.mul_small(10);
            big.add_small(u32::from(*d));
        }
        big
    }

    fn mul_small(&mut self, m: u32) {
        let mut carry = 0u64;
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    fn add_small(&mut self, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.0 {
            if carry == 0 {
                return;
            }
            let v = u64::from(*limb) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    /// Divides in place, returning the remainder.
    fn div_small(&mut self, d: u32) -> u32 {
        let mut rem = 0u64;
        for limb in self.0.iter_mut().rev() {
            let v = (rem << 32) | u64::from(*limb);
            *limb = (v / u64::from(d)) as u32;
            rem = v % u64::from(d);
        }
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        rem as u32
    }

    fn to_u64(&self) -> Option<u64> {
        match self.0.as_slice() {
            [] => Some(0),
            [lo] => Some(u64::from(*lo)),
            [lo, hi] => Some(u64::from(*lo) | (u64::from(*hi) << 32)),
            _ => None,
        }
    }
}

/// Parses a `k8s_openapi` quantity (surrounding whitespace trimmed like apimachinery's JSON decoder).
pub fn parse_quantity(q: &Quantity) -> Result<ParsedQuantity, QuantityError> {
    parse(q.0.trim())
}

/// CPU millicores of a quantity, rounded up like `MilliValue()`: `"250m"` → 250, `"1.5"` → 1500.
pub fn to_milli(q: &Quantity) -> Result<i64, QuantityError> {
    parse_quantity(q).map(|p| p.milli_value())
}

/// Bytes of a quantity, rounded up like `Value()`: `"1Gi"` → 1073741824, `"1.5k"` → 1500.
pub fn to_bytes(q: &Quantity) -> Result<i64, QuantityError> {
    parse_quantity(q).map(|p| p.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> i64 {
        parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}")).value()
    }
    fn milli(s: &str) -> i64 {
        parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}")).milli_value()
    }

    #[test]
    fn decimal_si_suffixes() {
        assert_eq!(bytes("1"), 1);
        assert_eq!(bytes("1k"), 1_000);
        assert_eq!(bytes("1M"), 1_000_000);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1T"), 1_000_000_000_000);
        assert_eq!(bytes("1P"), 1_000_000_000_000_000);
        assert_eq!(bytes("1E"), 1_000_000_000_000_000_000);
        assert_eq!(milli("1m"), 1);
        assert_eq!(milli("250m"), 250);
        assert_eq!(milli("1000u"), 1);
        assert_eq!(milli("1000000n"), 1);
        assert_eq!(parse("7n").map(|q| q.scaled_value(9)), Ok(7));
        assert_eq!(parse("7u").map(|q| q.scaled_value(6)), Ok(7));
        assert_eq!(parse("1k").map(|q| q.format()), Ok(Format::DecimalSi));
    }

    #[test]
    fn binary_si_suffixes() {
        assert_eq!(bytes("1Ki"), 1 << 10);
        assert_eq!(bytes("1Mi"), 1 << 20);
        assert_eq!(bytes("1Gi"), 1 << 30);
        assert_eq!(bytes("1Ti"), 1 << 40);
        assert_eq!(bytes("1Pi"), 1 << 50);
        assert_eq!(bytes("1Ei"), 1 << 60);
        assert_eq!(bytes("128Mi"), 134_217_728);
        assert_eq!(parse("1Ki").map(|q| q.format()), Ok(Format::BinarySi));
    }

    #[test]
    fn decimal_exponents() {
        assert_eq!(bytes("1e3"), 1_000);
        assert_eq!(bytes("1E3"), 1_000);
        assert_eq!(bytes("1e+3"), 1_000);
        assert_eq!(milli("1E-3"), 1);
        assert_eq!(milli("5e-1"), 500);
        assert_eq!(bytes("12e0"), 12);
        assert_eq!(bytes("1.5e2"), 150);
        assert_eq!(parse("1e3").map(|q| q.format()), Ok(Format::DecimalExponent));
        // A lone "E" is the exa suffix, not an exponent.
        assert_eq!(parse("2E").map(|q| q.format()), Ok(Format::DecimalSi));
    }

    #[test]
    fn fractions() {
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("1.5"), 1_500);
        assert_eq!(bytes("1.5Gi"), 1_610_612_736);
        assert_eq!(bytes("0.5Mi"), 524_288);
        assert_eq!(bytes("1."), 1);
        assert_eq!(bytes("1.G"), 1_000_000_000);
        assert_eq!(milli(".001"), 1);
        assert_eq!(milli(".0001k"), 100);
        // From apimachinery's table: 100.035Ki = 102435.84 bytes.
        assert_eq!(parse("100.035Ki").map(|q| q.scaled_value(2)), Ok(10_243_584));
        assert_eq!(bytes("100.035Ki"), 102_436);
    }

    #[test]
    fn signs() {
        assert_eq!(bytes("+5"), 5);
        assert_eq!(bytes("-5"), -5);
        assert_eq!(milli("-100m"), -100);
        assert_eq!(bytes("-1Ki"), -1024);
        assert_eq!(parse("-1").map(|q| q.is_negative()), Ok(true));
        assert_eq!(parse("-0").map(|q| q.is_negative()), Ok(false));
    }

    #[test]
    fn rounds_away_from_zero() {
        assert_eq!(milli("0.1m"), 1);
        assert_eq!(milli("1n"), 1);
        assert_eq!(milli("-0.1m"), -1);
        assert_eq!(bytes("1.5"), 2);
        assert_eq!(bytes("-1.5"), -2);
        assert_eq!(bytes("1.0000000001"), 2);
        assert_eq!(bytes("999m"), 1);
        assert_eq!(bytes("1000m"), 1);
        assert_eq!(bytes("1001m"), 2);
        // Tiny binary fractions keep their full precision: 1e-16 × 2^60 = 115.29… bytes.
        assert_eq!(bytes("0.0000000000000001Ei"), 116);
        assert_eq!(bytes("1e-1000"), 1);
        assert_eq!(milli("1e-1000"), 1);
    }

    #[test]
    fn zero_forms_like_upstream() {
        for s in ["0", "00", "0.0", "0m", "0Mi", "-0", "+0", "0e10", "000.000Ki", "-", "+", "."] {
            let q = parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"));
            assert!(q.is_zero(), "{s:?} should be zero");
            assert_eq!(q.value(), 0, "{s:?}");
            assert_eq!(q.milli_value(), 0, "{s:?}");
        }
    }

    #[test]
    fn leading_zeros_are_insignificant() {
        assert_eq!(bytes("007"), 7);
        assert_eq!(milli("0.050"), 50);
        assert_eq!(bytes("00.5k"), 500);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(bytes("8Ei"), i64::MAX);
        assert_eq!(bytes("12E"), i64::MAX);
        assert_eq!(bytes("-12E"), -i64::MAX);
        assert_eq!(bytes("1e100"), i64::MAX);
        assert_eq!(milli("9223372036854775807"), i64::MAX);
        assert_eq!(bytes("9223372036854775807"), i64::MAX);
        assert_eq!(bytes("9223372036854775808"), i64::MAX);
        assert_eq!(bytes("7Ei"), 7 << 60);
        assert_eq!(milli("9223372036854775m"), 9_223_372_036_854_775);
        assert_eq!(bytes("123456789012345678901234567890e-20"), 1_234_567_891);
    }

    #[test]
    fn exponent_is_truncated_to_32_bits_like_upstream() {
        // 2^32 truncates to 0, so this is 1 × 10^0.
        assert_eq!(bytes("1e4294967296"), 1);
        // Beyond int64 the exponent does not parse at all.
        assert!(matches!(parse("1e99999999999999999999"), Err(QuantityError::Suffix { .. })));
    }

    #[test]
    fn rejects_malformed_input() {
        // apimachinery's own invalid table, plus a few more.
        for s in [
            "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", " 1", "1 ", "1e", "1ee3",
            "1Ki3", "1K", "1kb", "1MB", "1mm", "1e3e", "1e3.5", "1Gi ", "--1", "+-1", "1,5", "0x10", "1_000", "∞",
        ] {
            assert!(parse(s).is_err(), "{s:?} must be rejected, got {:?}", parse(s));
        }
        assert_eq!(parse(""), Err(QuantityError::Empty));
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        let err = parse("1.1.M").expect_err("two dots");
        assert_eq!(err, QuantityError::Format { input: "1.1.M".into(), pos: 3, reason: "unexpected character" });
        let err = parse("1 ").expect_err("whitespace");
        assert!(err.to_string().contains("whitespace"), "{err}");
        let err = parse("5KM").expect_err("bad suffix");
        assert_eq!(err, QuantityError::Suffix { input: "5KM".into(), suffix: "KM".into() });
        assert!(err.to_string().contains("\"KM\""), "{err}");
        // A character that can never start a suffix is a format error, as upstream.
        let err = parse("5Kb").expect_err("bad character");
        assert_eq!(err, QuantityError::Format { input: "5Kb".into(), pos: 2, reason: "unexpected character" });
    }

    #[test]
    fn k8s_quantity_helpers() {
        assert_eq!(to_milli(&Quantity("250m".into())), Ok(250));
        assert_eq!(to_milli(&Quantity("2".into())), Ok(2_000));
        assert_eq!(to_bytes(&Quantity("64Mi".into())), Ok(67_108_864));
        assert_eq!(to_bytes(&Quantity(" 1Gi ".into())), Ok(1 << 30));
        assert!(to_bytes(&Quantity("lots".into())).is_err());
        assert_eq!(to_bytes(&Quantity("".into())), Err(QuantityError::Empty));
    }
}
