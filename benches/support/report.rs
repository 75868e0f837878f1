//! Result reporting shared by the benches: markdown tables and number formats.

use std::time::Duration;

/// A markdown table: metric, value, target, result.
pub struct Table {
    title: &'static str,
    rows: Vec<[String; 4]>,
}

impl Table {
    pub fn new(title: &'static str) -> Self {
        Self {
            title,
            rows: Vec::new(),
        }
    }

    pub fn row(
        &mut self,
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        result: impl Into<String>,
    ) {
        self.rows
            .push([metric.into(), value.into(), target.into(), result.into()]);
    }

    pub fn print(&self) {
        println!("## {}\n", self.title);
        println!("| metric | value | target | result |");
        println!("|---|---|---|---|");
        for [metric, value, target, result] in &self.rows {
            println!("| {metric} | {value} | {target} | {result} |");
        }
        println!();
    }
}

/// The `fraction` percentile of sorted latencies (nearest rank); zero when there are none.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let position = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[position - 1]
}

/// p50 / p99 / max of sorted latencies.
pub fn latency_summary(sorted: &[Duration]) -> String {
    let Some(max) = sorted.last() else {
        return "-".to_owned();
    };
    format!(
        "{} / {} / {}",
        millis(percentile(sorted, 0.50)),
        millis(percentile(sorted, 0.99)),
        millis(*max)
    )
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "short" }
}

pub fn per_second(count: f64, wall: Duration) -> f64 {
    let seconds = wall.as_secs_f64();
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

pub fn rate(value: f64) -> String {
    thousands(value.round().max(0.0) as u64)
}

pub fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

pub fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

pub fn bytes(value: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB"];
    let mut amount = value as f64;
    let mut unit = 0;
    while amount >= 1024.0 && unit + 1 < UNITS.len() {
        amount /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{amount:.1} {}", UNITS[unit])
    }
}
