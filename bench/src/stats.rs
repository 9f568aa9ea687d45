//! Latency percentiles and the ratio formatting of the reports.

/// p50, p99 and max of `samples_ns`, in milliseconds (NaN when empty).
pub fn percentiles_ms(samples_ns: &mut [u64]) -> (f64, f64, f64) {
    if samples_ns.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples_ns.sort_unstable();
    let at = |q: f64| samples_ns[((samples_ns.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
    (at(0.5), at(0.99), at(1.0))
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// `a / b` as `0.97×`.
pub fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}
