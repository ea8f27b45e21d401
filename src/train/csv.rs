//! Reading a run folder's CSV files (`metrics.csv`, `epochs.csv`, both written by the trainer):
//! the header's columns by name, a row's cells trimmed, a cell as a number.

/// The header (cells trimmed) and the remaining lines of `text`.
pub(crate) fn header(text: &str) -> (Vec<&str>, std::str::Lines<'_>) {
    let mut lines = text.lines();
    let header = cells(lines.next().unwrap_or_default());
    (header, lines)
}

/// The cells of one line, trimmed.
pub(crate) fn cells(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

/// The index of the column `name`.
pub(crate) fn col(header: &[&str], name: &str) -> Option<usize> {
    header.iter().position(|h| *h == name)
}

/// Cell `c` of `cells` as a number (`None` for a missing column, cell or unparsable text).
pub(crate) fn num(cells: &[&str], c: Option<usize>) -> Option<f64> {
    c.and_then(|c| cells.get(c))
        .and_then(|s| s.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_by_name_and_numbers_by_column() {
        let (h, mut rows) = header("epoch, iter,total\n0,3, 1.5\n\n");
        assert_eq!(h, ["epoch", "iter", "total"]);
        assert_eq!((col(&h, "total"), col(&h, "lr")), (Some(2), None));
        let row = cells(rows.next().unwrap());
        assert_eq!(num(&row, col(&h, "total")), Some(1.5));
        assert_eq!(num(&row, col(&h, "lr")), None);
        assert_eq!(num(&row, Some(7)), None);
        assert_eq!(num(&cells(rows.next().unwrap()), Some(0)), None);
    }
}
