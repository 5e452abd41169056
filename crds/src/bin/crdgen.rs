//! Writes the CustomResourceDefinitions generated from the Rust types.
//!
//! ```text
//! crdgen                # every CRD to standard output, as one multi-document YAML stream
//! crdgen --out DIR      # one file per CRD in DIR (crds/yaml in this repository)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let documents = crds::crd_documents();
    match args.as_slice() {
        [] => {
            for (_, yaml) in documents {
                print!("---\n{yaml}");
            }
            ExitCode::SUCCESS
        }
        [flag, dir] if flag == "--out" => {
            let dir = PathBuf::from(dir);
            for (file, yaml) in documents {
                let path = dir.join(file);
                if let Err(err) = std::fs::write(&path, yaml) {
                    eprintln!("error: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: crdgen [--out DIR]");
            ExitCode::from(2)
        }
    }
}
