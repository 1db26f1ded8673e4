//! Phone numbers as the upstream stores them: E.164 (`+442079460958`),
//! read with `phonenumber` (Google's libphonenumber rules and metadata),
//! not hand-written patterns.

use super::Problem;

/// The hint for a number that cannot be read.
const HINT: &str = "We could not read that phone number. Use the international format with the country code, e.g. +44 20 7946 0958.";

/// `input` in E.164, or a problem on the phone field. A number without a
/// country code (`(555) 123-4567`) is refused rather than guessed: the
/// site serves every country.
pub(crate) fn normalize(input: &str) -> Result<String, Problem> {
    let input = input.trim();
    match phonenumber::parse(None, input) {
        Ok(number) if phonenumber::is_valid(&number) => {
            Ok(number.format().mode(phonenumber::Mode::E164).to_string())
        }
        _ => Err(Problem::invalid(HINT).on("phone")),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn numbers_are_stored_in_e164_and_unreadable_ones_get_the_hint() {
        assert_eq!(normalize(" +1 (202) 555-0143 ").unwrap(), "+12025550143");
        assert_eq!(normalize("+33 6 12 34 56 78").unwrap(), "+33612345678");
        for unreadable in [
            "(555) 123-4567",
            "07700 900123",
            "+1",
            "call me",
            "+1555123",
        ] {
            let problem = normalize(unreadable).unwrap_err();
            assert!(
                problem.message.contains("international format"),
                "{unreadable}"
            );
            assert_eq!(problem.field, Some("phone"));
        }
    }
}
