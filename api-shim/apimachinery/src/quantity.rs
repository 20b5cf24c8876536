//! Kubernetes resource quantities (`"100m"`, `"1.5Gi"`, `"1e3"`): parsing, comparison and the
//! canonical form, the way apimachinery's `resource.Quantity` does them.
//!
//! Why exactly upstream's rules: the API server stores the canonical form (clients diff against
//! it), validation compares quantities (`requests <= limits`, nothing below 0), and the agent
//! turns requests and limits into CPU shares, CFS quota and memory limits. A second reading of a
//! quantity anywhere would give a pod a limit other than the one `kubectl describe` shows, so
//! there is one, and it follows `k8s.io/apimachinery/pkg/api/resource` quirks included:
//!
//! - grammar: optional sign, digits with an optional fraction (`1`, `1.5`, `.5`, `1.`), then one
//!   suffix: decimal SI (`n u m "" k M G T P E`), binary SI (`Ki Mi Gi Ti Pi Ei`) or a decimal
//!   exponent (`e3`, `E-3`, `e+3`). No whitespace anywhere.
//! - a number made only of zeros (and a lone sign or `.`) is zero whatever follows it, because
//!   upstream's scanner stops there (`"-"`, `"+"`, `"."`, `"00"`, `"0Mi"` all parse as 0);
//! - an exponent is read as an `int64` and then truncated to 32 bits, as upstream does;
//! - parsing rounds a value finer than 1n *up* (away from zero) to a whole number of nanos
//!   (`0.0001m` is `100n`, `1e-12` is `1e-9`); a binary-SI value above 2^63-1 is capped there,
//!   a decimal one is not (`1e400` is kept and printed `10e399`, like upstream);
//! - the canonical form keeps the suffix family, uses the largest exponent that loses nothing
//!   and prints no fraction (`1.5` → `1500m`, `1.5Gi` → `1536Mi`, `0.5Gi` → `512Mi`,
//!   binary values below 1024 or not whole → decimal SI);
//! - conversions round *away from zero* (`MilliValue()` / `Value()`), so `"0.1m"` CPU is 1
//!   millicore and `"1.5"` bytes is 2 bytes, and they saturate at `±i64::MAX`.
//!
//! Every operation is linear in the length of the input: the value is kept as decimal digits
//! and a power of ten, never expanded (a `1e2000000000` costs nothing).
//!
//! [`parse`] takes the string strictly like `ParseQuantity`; the helpers that take a
//! `k8s_openapi` [`Quantity`] first trim surrounding whitespace, as upstream's JSON decoding
//! does before parsing. Negative quantities parse (upstream represents them); validation
//! refuses them where a resource amount is expected ([`NEGATIVE_MESSAGE`]).

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Upstream's validation message for a negative resource amount.
pub const NEGATIVE_MESSAGE: &str = "must be greater than or equal to 0";

/// Upstream's message for a string that is not a quantity (`ErrFormatWrong`).
pub const FORMAT_MESSAGE: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

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

/// How the suffix scales the number (and which family the canonical form uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `n u m "" k M G T P E`: times 10^exponent.
    DecimalSi,
    /// `Ki Mi Gi Ti Pi Ei`: times 2^exponent.
    BinarySi,
    /// `e<n>` / `E<n>`: times 10^n.
    DecimalExponent,
}

/// A parsed quantity: `sign × digits × 10^exp10`, already rounded up to whole nanos and capped
/// like upstream (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuantity {
    negative: bool,
    /// Significant decimal digit values, most significant first: no leading or trailing zero
    /// (empty = zero).
    digits: Vec<u8>,
    /// Power of ten applied to `digits`.
    exp10: i64,
    format: Format,
}

/// Characters upstream lets a suffix be made of (before an optional signed exponent).
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
    // `frac.len()` is bounded by the input length, far below i64::MAX.
    let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX);
    let exp10 = match format {
        Format::BinarySi => {
            // Multiply by 2^exponent (≤ 2^60) in base ten, in steps that fit a u32.
            let mut rest = u32::try_from(exponent).unwrap_or(0);
            while rest > 0 {
                let step = rest.min(31);
                mul_small(&mut digits, 1u32 << step);
                rest -= step;
            }
            -frac_len
        }
        Format::DecimalSi | Format::DecimalExponent => i64::from(exponent) - frac_len,
    };
    let mut q = ParsedQuantity { negative, digits, exp10, format };
    q.normalize();
    if q.is_zero() {
        return Ok(ParsedQuantity::zero());
    }
    q.round_up_to_nanos();
    if q.format == Format::BinarySi {
        if q.cmp_magnitude(&ParsedQuantity::from_u64(i64::MAX as u64, Format::BinarySi)) == Ordering::Greater {
            let negative = q.negative;
            q = ParsedQuantity::from_u64(i64::MAX as u64, Format::BinarySi);
            q.negative = negative;
        }
        // Below one, binary SI would need a fraction: upstream switches to decimal SI.
        if q.magnitude() <= 0 {
            q.format = Format::DecimalSi;
        }
    }
    Ok(q)
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

/// `digits *= m` in base ten.
fn mul_small(digits: &mut Vec<u8>, m: u32) {
    let mut carry = 0u64;
    for d in digits.iter_mut().rev() {
        let v = u64::from(*d) * u64::from(m) + carry;
        *d = (v % 10) as u8;
        carry = v / 10;
    }
    let mut front = Vec::new();
    while carry > 0 {
        front.push((carry % 10) as u8);
        carry /= 10;
    }
    if !front.is_empty() {
        front.reverse();
        front.append(digits);
        *digits = front;
    }
}

/// `digits += 1` in base ten.
fn add_one(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

impl ParsedQuantity {
    fn zero() -> Self {
        ParsedQuantity { negative: false, digits: Vec::new(), exp10: 0, format: Format::DecimalSi }
    }

    fn from_u64(v: u64, format: Format) -> Self {
        let mut q = ParsedQuantity {
            negative: false,
            digits: v.to_string().bytes().map(|b| b - b'0').collect(),
            exp10: 0,
            format,
        };
        q.normalize();
        q
    }

    /// Strips leading zeros and moves trailing zeros into the exponent.
    fn normalize(&mut self) {
        let leading = self.digits.iter().take_while(|d| **d == 0).count();
        self.digits.drain(..leading);
        while self.digits.last() == Some(&0) {
            self.digits.pop();
            self.exp10 = self.exp10.saturating_add(1);
        }
        if self.digits.is_empty() {
            self.negative = false;
            self.exp10 = 0;
        }
    }

    /// Upstream rounds anything finer than a nano up (away from zero) to the next nano.
    fn round_up_to_nanos(&mut self) {
        if self.exp10 >= -9 {
            return;
        }
        // Digits below 10^-9 to drop; the last digit is non-zero, so dropping is always inexact.
        let drop = (-9i64).saturating_sub(self.exp10);
        let keep = i64::try_from(self.digits.len()).unwrap_or(i64::MAX).saturating_sub(drop);
        if keep <= 0 {
            self.digits = vec![1];
        } else {
            self.digits.truncate(usize::try_from(keep).unwrap_or(0));
            add_one(&mut self.digits);
        }
        self.exp10 = -9;
        self.normalize();
    }

    /// Power of ten of the digit just above the most significant one (`|v| < 10^magnitude`).
    fn magnitude(&self) -> i64 {
        i64::try_from(self.digits.len()).unwrap_or(i64::MAX).saturating_add(self.exp10)
    }

    fn cmp_magnitude(&self, other: &Self) -> Ordering {
        match (self.is_zero(), other.is_zero()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        // Normalized: no leading zeros, so the magnitude decides unless equal; then the digits
        // (compared most significant first; a longer tail is larger since it ends non-zero).
        self.magnitude().cmp(&other.magnitude()).then_with(|| self.digits.cmp(&other.digits))
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    pub fn is_negative(&self) -> bool {
        self.negative && !self.is_zero()
    }

    /// The suffix family the quantity was written with (after upstream's adjustments).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The value in units of 10^-`scale`, rounded away from zero, saturating at `±i64::MAX`
    /// (apimachinery's `ScaledValue(-scale)`).
    pub fn scaled_value(&self, scale: i32) -> i64 {
        if self.is_zero() {
            return 0;
        }
        let e = self.exp10.saturating_add(i64::from(scale));
        let int_digits = self.magnitude().saturating_add(i64::from(scale));
        let magnitude = if int_digits > 19 {
            i64::MAX
        } else if int_digits <= 0 {
            1
        } else {
            // 1..=19 integer digits: fits a u128; the dropped fraction (if any) is non-zero.
            let mut v: u128 = 0;
            let take = usize::try_from(int_digits).unwrap_or(0).min(self.digits.len());
            for d in &self.digits[..take] {
                v = v * 10 + u128::from(*d);
            }
            for _ in 0..e.max(0) {
                v *= 10;
            }
            if take < self.digits.len() {
                v += 1;
            }
            i64::try_from(v).unwrap_or(i64::MAX)
        };
        if self.negative { -magnitude } else { magnitude }
    }

    /// The exact value in nanos (every parsed quantity is a whole number of them), saturating at
    /// `±i128::MAX` (beyond 10^29 units): what sums and exact comparisons use.
    pub fn nanos(&self) -> i128 {
        if self.is_zero() {
            return 0;
        }
        let e = self.exp10.saturating_add(9);
        let magnitude = if self.magnitude().saturating_add(9) > 38 {
            i128::MAX
        } else {
            // e ≥ 0 after rounding to nanos; at most 38 digits in all.
            let mut v: i128 = 0;
            for d in &self.digits {
                v = v * 10 + i128::from(*d);
            }
            for _ in 0..e.max(0) {
                v = v.saturating_mul(10);
            }
            v
        };
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

    /// The canonical string upstream serializes (`Quantity.String()`).
    pub fn canonical(&self) -> String {
        if self.is_zero() {
            return "0".into();
        }
        let sign = if self.negative { "-" } else { "" };
        let digits = |ds: &[u8]| ds.iter().map(|d| char::from(b'0' + d)).collect::<String>();
        if self.format == Format::BinarySi && self.exp10 >= 0 && self.magnitude() <= 19 {
            // Whole (exp10 ≥ 0) and at most i64::MAX after the parse cap.
            let whole = self.scaled_value(0).unsigned_abs();
            if whole >= 1024 {
                let (mut amount, mut exp) = (whole, 0usize);
                while amount % 1024 == 0 && exp < 6 {
                    amount /= 1024;
                    exp += 1;
                }
                let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][exp];
                return format!("{sign}{amount}{suffix}");
            }
        }
        // Decimal: make the exponent a multiple of three by moving zeros into the digits.
        let mut ds = self.digits.clone();
        let mut e = self.exp10;
        match e % 3 {
            1 | -2 => {
                ds.push(0);
                e -= 1;
            }
            2 | -1 => {
                ds.extend([0, 0]);
                e -= 2;
            }
            _ => {}
        }
        let suffix = match self.format {
            Format::DecimalExponent => {
                if e == 0 {
                    String::new()
                } else {
                    format!("e{e}")
                }
            }
            Format::DecimalSi | Format::BinarySi => match e {
                -9 => "n".into(),
                -6 => "u".into(),
                -3 => "m".into(),
                0 => String::new(),
                3 => "k".into(),
                6 => "M".into(),
                9 => "G".into(),
                12 => "T".into(),
                15 => "P".into(),
                18 => "E".into(),
                // Beyond exa upstream has no suffix (and would print the digits alone, losing
                // the exponent); the exponent form keeps the value.
                e => format!("e{e}"),
            },
        };
        format!("{sign}{}{suffix}", digits(&ds))
    }
}

impl PartialOrd for ParsedQuantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Numeric order (`Quantity.Cmp`): the suffix family does not matter (`1Ki` == `1024`).
impl Ord for ParsedQuantity {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.is_negative(), other.is_negative()) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl std::fmt::Display for ParsedQuantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Parses a `k8s_openapi` quantity (surrounding whitespace trimmed like upstream's JSON decoder).
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

/// The canonical form of a quantity string (after trimming), or why it is not one.
pub fn canonicalize(s: &str) -> Result<String, QuantityError> {
    parse(s.trim()).map(|q| q.canonical())
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

    fn canon(s: &str) -> String {
        parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}")).canonical()
    }

    #[test]
    fn canonical_form_like_upstream() {
        // (input, upstream's Quantity.String()), from apimachinery's quantity tests and docs.
        for (input, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("-", "0"),
            ("+", "0"),
            (".", "0"),
            ("1", "1"),
            ("1.5", "1500m"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1Ki", "1Ki"),
            ("1024", "1024"),
            ("1024Ki", "1Mi"),
            ("1000Mi", "1000Mi"),
            ("1.1Ki", "1126400m"),
            ("0.5Ki", "512"),
            ("100m", "100m"),
            ("1000m", "1"),
            ("0.1", "100m"),
            ("0.1m", "100u"),
            ("0.0001m", "100n"),
            ("1n", "1n"),
            ("0.1n", "1n"),
            ("1e-12", "1e-9"),
            ("1e3", "1e3"),
            ("1e4", "10e3"),
            ("1E-3", "1e-3"),
            ("1e400", "10e399"),
            ("12e6", "12e6"),
            ("1000k", "1M"),
            ("1001k", "1001k"),
            ("-5Mi", "-5Mi"),
            ("-1", "-1"),
            ("-100m", "-100m"),
            (".5", "500m"),
            ("1.", "1"),
            ("007", "7"),
            ("8Ei", "9223372036854775807"),
            ("100E", "100E"),
        ] {
            assert_eq!(canon(input), want, "{input:?}");
        }
    }

    #[test]
    fn compares_numerically() {
        let q = |s: &str| parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(q("1Ki").cmp(&q("1024")), Ordering::Equal);
        assert!(q("1Mi") > q("1M"));
        assert!(q("999m") < q("1"));
        assert!(q("-1") < q("0"));
        assert!(q("-2") < q("-1"));
        assert!(q("1e400") > q("8Ei"));
        assert!(q("0.5") < q("501m"));
        assert_eq!(q("-").cmp(&q("0")), Ordering::Equal);
    }

    #[test]
    fn huge_inputs_stay_linear() {
        let long = format!("0.{}1", "0".repeat(100_000));
        assert_eq!(canon(&long), "1n");
        let wide = format!("{}e-100000", "9".repeat(100_000));
        assert_eq!(canon(&wide), "1");
        assert_eq!(canon("1e2000000000"), "100e1999999998");
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
