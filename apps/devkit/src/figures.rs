//! The figures benchmark parts report, gathered over repeated runs: each is summarised as
//! the median with the smallest and largest run, in the order first reported.

use std::io::Write;

#[derive(Debug, Default)]
pub struct Figures {
    /// Name, unit, one value per run.
    rows: Vec<(String, String, Vec<f64>)>,
}

impl Figures {
    pub fn add(&mut self, name: &str, unit: &str, value: f64) {
        match self.rows.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, _, values)) => values.push(value),
            None => self.rows.push((name.to_owned(), unit.to_owned(), vec![value])),
        }
    }

    /// (median, min, max, runs) of a figure; the median of an even count is the mean of
    /// the middle two.
    pub fn summary(&self, name: &str) -> Option<(f64, f64, f64, usize)> {
        let (_, _, values) = self.rows.iter().find(|(n, _, _)| n == name)?;
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((median, v[0], v[n - 1], n))
    }

    /// A Markdown table: figure, median, min, max, runs.
    pub fn report(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "| figure | median | min | max | runs |")?;
        writeln!(out, "|---|---:|---:|---:|---:|")?;
        for (name, unit, _) in &self.rows {
            if let Some((median, min, max, n)) = self.summary(name) {
                writeln!(
                    out,
                    "| {name} ({unit}) | {} | {} | {} | {n} |",
                    show(median),
                    show(min),
                    show(max)
                )?;
            }
        }
        Ok(())
    }
}

/// Three significant figures at least, no exponent.
fn show(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_median_with_the_extremes() {
        let mut f = Figures::default();
        for v in [5.0, 1.0, 9.0] {
            f.add("odd", "x", v);
        }
        for v in [4.0, 1.0, 2.0, 10.0] {
            f.add("even", "x", v);
        }
        assert_eq!(f.summary("odd"), Some((5.0, 1.0, 9.0, 3)));
        assert_eq!(f.summary("even"), Some((3.0, 1.0, 10.0, 4)));
        assert_eq!(f.summary("none"), None);
        let mut table = Vec::new();
        f.report(&mut table).expect("write");
        let table = String::from_utf8(table).expect("utf8");
        assert!(table.contains("| odd (x) | 5.00 | 1.00 | 9.00 | 3 |"), "{table}");
    }
}
