//! Reading the process's own memory map, to verify that an unloaded library is gone.

use std::path::Path;

/// Whether any mapping of this process comes from `file` (also when the file was deleted,
/// which the kernel shows as `path (deleted)`).
pub fn is_mapped(file: &Path) -> std::io::Result<bool> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(maps_mention(&maps, file))
}

fn maps_mention(maps: &str, file: &Path) -> bool {
    let wanted = file.to_string_lossy();
    maps.lines().any(|line| {
        // The path is the sixth column and may contain spaces; it starts at the first '/'.
        line.find('/').is_some_and(|at| {
            let path = &line[at..];
            path == wanted || path.strip_suffix(" (deleted)") == Some(&*wanted)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
7f0000000000-7f0000001000 r--p 00000000 fd:01 123 /tmp/balut-x/libecho-g1-abc.so (deleted)
7f0000001000-7f0000002000 r-xp 00001000 fd:01 124 /usr/lib/libc.so.6
7f0000003000-7f0000004000 rw-p 00000000 00:00 0 [heap]
";

    #[test]
    fn finds_deleted_and_live_paths_exactly() {
        assert!(maps_mention(
            SAMPLE,
            Path::new("/tmp/balut-x/libecho-g1-abc.so")
        ));
        assert!(maps_mention(SAMPLE, Path::new("/usr/lib/libc.so.6")));
        assert!(!maps_mention(
            SAMPLE,
            Path::new("/tmp/balut-x/libecho-g2-abc.so")
        ));
        assert!(!maps_mention(SAMPLE, Path::new("/usr/lib/libc.so")));
    }

    #[test]
    fn own_executable_is_mapped() {
        let exe = std::env::current_exe().unwrap();
        assert!(is_mapped(&exe).unwrap());
    }
}
