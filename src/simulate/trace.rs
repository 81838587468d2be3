//! Traffic traces for the simulator: CSV rows `timestamp,app,recipients`,
//! one per message. Timestamps are seconds (since the trace start or Unix
//! time; only differences matter), in any order. A header row is allowed.

/// One message of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub at: f64,
    pub app: String,
    pub recipients: u32,
}

/// Parses a trace; an error names the line and what is wrong with it.
pub fn parse_trace(text: &str) -> Result<Vec<Arrival>, String> {
    let mut arrivals = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (number == 1 && line.starts_with("timestamp"))
        {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [at, app, recipients] = fields[..] else {
            return Err(format!(
                "line {number}: expected 3 fields timestamp,app,recipients; found {}",
                fields.len()
            ));
        };
        let at: f64 = at
            .parse()
            .ok()
            .filter(|at: &f64| at.is_finite())
            .ok_or_else(|| format!("line {number}: timestamp {at:?} is not a number of seconds"))?;
        let recipients: u32 = recipients
            .parse()
            .ok()
            .filter(|count| *count > 0)
            .ok_or_else(|| {
                format!("line {number}: recipients {recipients:?} is not a whole number above 0")
            })?;
        arrivals.push(Arrival {
            at,
            app: app.to_string(),
            recipients,
        });
    }
    if arrivals.is_empty() {
        return Err("the trace has no messages".into());
    }
    arrivals.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(arrivals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sorts_and_explains_errors() {
        let trace = parse_trace("timestamp,app,recipients\n10,b,2\n# note\n5.5, a ,1\n").unwrap();
        assert_eq!(
            trace,
            vec![
                Arrival {
                    at: 5.5,
                    app: "a".into(),
                    recipients: 1
                },
                Arrival {
                    at: 10.0,
                    app: "b".into(),
                    recipients: 2
                },
            ]
        );
        assert_eq!(
            parse_trace("1,a\n").unwrap_err(),
            "line 1: expected 3 fields timestamp,app,recipients; found 2"
        );
        assert!(
            parse_trace("x,a,1\n")
                .unwrap_err()
                .contains("timestamp \"x\"")
        );
        assert!(
            parse_trace("1,a,0\n")
                .unwrap_err()
                .contains("recipients \"0\"")
        );
        assert!(parse_trace("timestamp,app,recipients\n").is_err());
    }
}
