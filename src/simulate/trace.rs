//! Traffic traces for the simulator: CSV rows `timestamp,app,recipients`,
//! one per message, or `timestamp,app,recipients,domain` (that many
//! recipients at that domain: what each receiver sees). Timestamps are
//! seconds (since the trace start or Unix time; only differences matter),
//! in any order. A header row is allowed.

use std::collections::HashMap;

/// One message of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub at: f64,
    pub app: String,
    pub recipients: u32,
    /// The recipients' domain, when the trace says it.
    pub domain: Option<String>,
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
        let (at, app, recipients, domain) = match fields[..] {
            [at, app, recipients] => (at, app, recipients, None),
            [at, app, recipients, domain] => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                if domain.is_empty() {
                    return Err(format!(
                        "line {number}: the domain column is empty (leave it out, or name the recipients' domain)"
                    ));
                }
                (at, app, recipients, Some(domain))
            }
            _ => {
                return Err(format!(
                    "line {number}: expected 3 fields timestamp,app,recipients (or 4, with domain); found {}",
                    fields.len()
                ));
            }
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
            domain,
        });
    }
    if arrivals.is_empty() {
        return Err("the trace has no messages".into());
    }
    arrivals.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(arrivals)
}

/// Parses `--mx-map`: CSV rows `domain,mx`, one per MX host (a domain with
/// several hosts has several rows); a header row is allowed.
pub fn parse_mx_map(text: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if number == 1 && fields[0] == "domain" {
            continue;
        }
        let [domain, host] = fields[..] else {
            return Err(format!(
                "line {number}: expected 2 fields domain,mx; found {}",
                fields.len()
            ));
        };
        if domain.is_empty() || host.is_empty() {
            return Err(format!(
                "line {number}: a domain and an MX host name are needed"
            ));
        }
        map.entry(domain.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(host.trim_end_matches('.').to_ascii_lowercase());
    }
    Ok(map)
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
                    recipients: 1,
                    domain: None,
                },
                Arrival {
                    at: 10.0,
                    app: "b".into(),
                    recipients: 2,
                    domain: None,
                },
            ]
        );
        assert_eq!(
            parse_trace("1,a\n").unwrap_err(),
            "line 1: expected 3 fields timestamp,app,recipients (or 4, with domain); found 2"
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

    #[test]
    fn an_mx_map_gives_each_domain_its_hosts() {
        let map =
            parse_mx_map("domain,mx\nExample.com,MX1.example.net.\nexample.com,mx2.example.net\n")
                .unwrap();
        assert_eq!(map["example.com"], ["mx1.example.net", "mx2.example.net"]);
        let first =
            parse_mx_map("domaintools.com,mx.example.net\nexample.org.,mx.example.net\n").unwrap();
        assert!(
            first.contains_key("domaintools.com"),
            "a first row is data unless its field is `domain`"
        );
        assert!(first.contains_key("example.org"), "a root dot");
        assert!(
            parse_mx_map("example.com\n")
                .unwrap_err()
                .starts_with("line 1:")
        );
        assert!(parse_mx_map("example.com,\n").is_err());
    }

    #[test]
    fn a_fourth_column_is_the_recipients_domain() {
        let trace =
            parse_trace("timestamp,app,recipients,domain\n1,hr,3,Gmail.com\n2,hr,1\n").unwrap();
        assert_eq!(trace[0].domain.as_deref(), Some("gmail.com"));
        assert_eq!(trace[1].domain, None, "rows may leave it out");
        assert!(
            parse_trace("1,hr,3,\n")
                .unwrap_err()
                .contains("the domain column is empty")
        );
        let rooted = parse_trace("1,hr,3,Example.COM.\n").unwrap();
        assert_eq!(rooted[0].domain.as_deref(), Some("example.com"));
        assert!(parse_trace("1,hr,3,a.test,x\n").is_err());
    }
}
