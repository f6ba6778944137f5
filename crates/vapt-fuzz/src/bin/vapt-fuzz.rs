//! The AFL++ harness. `vapt-fuzz <target>` runs one target of [`vapt_fuzz::TARGETS`] in AFL's
//! persistent mode; `vapt-fuzz list` prints the targets; `vapt-fuzz seeds <target> <dir> <repo>` writes the target's seeds into
//! `dir`. `cargo xtask fuzz <target> --seconds N` builds and runs it.
//!
//! Panics that vapt catches at a boundary (a dependency's panic turned into an error) are not
//! crashes; anything that escapes a target — a panic, an abort, running out of memory or stack —
//! is.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = |name: &str| {
        vapt_fuzz::find(name).unwrap_or_else(|| {
            eprintln!(
                "unknown target `{name}`; targets: {}",
                vapt_fuzz::names().join(", ")
            );
            std::process::exit(2)
        })
    };
    match args.as_slice() {
        [list] if list == "list" => println!("{}", vapt_fuzz::names().join("\n")),
        [seeds, name, dir, repo] if seeds == "seeds" => {
            let target = target(name);
            for (file, bytes) in vapt_fuzz::seeds::seeds(target.name, Path::new(repo)) {
                if let Err(e) = std::fs::write(Path::new(dir).join(&file), bytes) {
                    eprintln!("cannot write seed {file} into {dir}: {e}");
                    std::process::exit(1);
                }
            }
        }
        [name] => {
            let target = target(name);
            afl::fuzz_nohook!(|data: &[u8]| (target.run)(data));
        }
        _ => {
            eprintln!("usage: vapt-fuzz <target> | vapt-fuzz seeds <target> <dir> <repo>");
            std::process::exit(2);
        }
    }
}
