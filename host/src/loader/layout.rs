//! abi_stable's layout check of a plugin's root module, run while the library is being
//! opened. All of it is safe code; the `unsafe` that opens the library is in `mod.rs`.

use balut_plugin_api::__private::PluginModRef;

/// abi_stable's layout check, done so that older plugins load and every library can be
/// closed again (measured; see docs/ARCHITECTURE.md, "Interface evolution"):
///
/// - The plugin's layout is the "interface" side and the host's the "implementation": a
///   host built for interface 1.N has appended prefix fields and methods a 1.0 plugin lacks,
///   which abi_stable accepts only in that direction (`init_root_module` checks the other
///   way and refuses every older plugin with "too many fields").
/// - A fresh `CheckingGlobals` per load: the process-wide one keeps `&'static` pointers into
///   checked libraries forever, and a later check through it after dlclose crashes.
pub(super) fn check_layout(lib_header: &abi_stable::library::LibHeader) -> Result<(), String> {
    use abi_stable::StableAbi;
    use abi_stable::abi_stability::abi_checking::{
        CheckingGlobals, check_layout_compatibility_with_globals,
    };
    let plugin = lib_header
        .layout()
        .ok_or_else(|| "the plugin was exported without a layout to check".to_owned())?;
    let globals = CheckingGlobals::new();
    let checked = check_layout_compatibility_with_globals(
        plugin,
        <PluginModRef as StableAbi>::LAYOUT,
        &globals,
    );
    // Rendered and dropped while the library, whose statics it points into, is still open.
    let result = checked.map_err(|e| summarize_layout_error(&e.to_string()));
    drop(globals);
    result
}

/// abi_stable's layout errors print both type layouts in full (dozens of lines); keep the
/// verdict at the end ("Error:mismatched package Expected: a Found: b") on one line. In
/// [`check_layout`]'s direction "expected" is the plugin's and "found" the host's.
fn summarize_layout_error(full: &str) -> String {
    tracing::debug!(detail = full, "abi_stable layout check failed");
    let verdict = full
        .rsplit_once("\nError:")
        .map_or(full, |(_, verdict)| verdict);
    let words: Vec<&str> = verdict.split_whitespace().collect();
    let mut out = words.join(" ");
    for (from, to) in [
        (" Expected: ", ": the plugin has "),
        (" Found: ", ", the host expects "),
    ] {
        out = out.replacen(from, to, 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_errors_are_summarized() {
        let full = "\nCompared <this>:\n    lots\nError:mismatched package\nExpected:\n    balut-plugin-api\nFound:\n    other\n\n";
        assert_eq!(
            summarize_layout_error(full),
            "mismatched package: the plugin has balut-plugin-api, the host expects other"
        );
    }
}
