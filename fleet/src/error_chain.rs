//! An error with its causes on one line, `a: b: c`, for logs and
//! `/status`: clients such as reqwest put the useful part in a source.

/// `error` followed by each of its sources, joined with `: `.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_source_is_named_in_order() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(OuterError(inner));
        assert_eq!(
            super::error_chain(&outer),
            "request failed: connection refused"
        );
    }

    #[derive(Debug)]
    struct OuterError(std::io::Error);

    impl std::fmt::Display for OuterError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }

    impl std::error::Error for OuterError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
