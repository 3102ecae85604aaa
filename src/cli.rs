//! The command line: `--config FILE`, `--check-config`, `--version`, `--help`.

use std::path::PathBuf;

pub const USAGE: &str = "\
gwproxy: the Tyk Dashboard's POST /api/proxy endpoint as a standalone server

usage:
  gwproxy [--config FILE]                 run (built-in default config without FILE)
  gwproxy --check-config --config FILE    validate FILE; exit 0 if valid, 2 if not
  gwproxy --version | --help

environment:
  GWPROXY_CONFIG=FILE    same as --config FILE
  GWPROXY_SECRET=S       the built-in default user's secret (else one is generated)
  RUST_LOG=FILTER        log filter, e.g. gwproxy=debug
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run { config: Option<PathBuf> },
    CheckConfig { config: Option<PathBuf> },
    Version,
    Help,
}

/// Parses the arguments after the program name. `env_config` is
/// `GWPROXY_CONFIG`; an explicit `--config` wins over it.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env_config: Option<String>,
) -> Result<Command, String> {
    let mut config = None;
    let mut check = false;
    let mut asked = None;
    let mut args = args.into_iter();

    // Every argument is read before --version or --help is answered, so a
    // mistyped one beside them is still refused.
    while let Some(arg) = args.next() {
        let file = match arg.as_str() {
            "--version" | "-V" => {
                asked = asked.or(Some(Command::Version));
                continue;
            }
            "--help" | "-h" => {
                asked = asked.or(Some(Command::Help));
                continue;
            }
            "--check-config" => {
                check = true;
                continue;
            }
            "--config" | "-c" => args.next().ok_or("--config needs a FILE")?,
            other => match other.strip_prefix("--config=") {
                Some(file) => file.to_owned(),
                None => return Err(format!("unknown argument `{other}`")),
            },
        };
        if config.replace(PathBuf::from(file)).is_some() {
            return Err("--config is given more than once".to_owned());
        }
    }
    if let Some(command) = asked {
        return Ok(command);
    }

    let config = config.or_else(|| env_config.filter(|s| !s.is_empty()).map(PathBuf::from));
    Ok(if check {
        Command::CheckConfig { config }
    } else {
        Command::Run { config }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: Option<&str>) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()), env.map(Into::into))
    }

    #[test]
    fn reads_config_from_flag_or_environment() {
        let file = |s: &str| Some(PathBuf::from(s));
        assert_eq!(run(&[], None), Ok(Command::Run { config: None }));
        assert_eq!(
            run(&["--config", "a.json"], None),
            Ok(Command::Run {
                config: file("a.json")
            })
        );
        assert_eq!(
            run(&["--config=a.json"], None),
            Ok(Command::Run {
                config: file("a.json")
            })
        );
        assert_eq!(
            run(&[], Some("e.json")),
            Ok(Command::Run {
                config: file("e.json")
            })
        );
        assert_eq!(
            run(&["-c", "a.json"], Some("e.json")),
            Ok(Command::Run {
                config: file("a.json")
            })
        );
    }

    #[test]
    fn check_config_in_either_order() {
        let expected = Ok(Command::CheckConfig {
            config: Some(PathBuf::from("f")),
        });
        assert_eq!(run(&["--check-config", "--config", "f"], None), expected);
        assert_eq!(run(&["--config", "f", "--check-config"], None), expected);
    }

    #[test]
    fn refuses_unknown_and_incomplete_arguments() {
        assert!(run(&["--confg", "f"], None).is_err());
        assert!(run(&["--config"], None).is_err());
        assert_eq!(run(&["--version"], None), Ok(Command::Version));
        assert_eq!(run(&["--help"], None), Ok(Command::Help));
        assert_eq!(run(&["-c", "f", "-V"], None), Ok(Command::Version));
        assert!(run(&["--version", "--bogus"], None).is_err());
        assert!(run(&["--config", "a", "--config=b"], None).is_err());
    }
}
