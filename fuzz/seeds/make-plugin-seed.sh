#!/bin/sh
# Builds seeds/plugin_file/tiny.so: the smallest shared object the plugin-file checks accept
# (both exports, a well-formed declaration), so the fuzzer starts on the accepting path.
# Needs a C compiler. The seed is committed; run this only to remake it.
set -eu
cd "$(dirname "$0")"
cat > /tmp/balut-tiny-plugin.c <<'C'
/* magic, interface 1.1, name "tiny", version "0.1" */
__attribute__((visibility("default"))) const unsigned char BALUT_PLUGIN_DECLARATION[120] = {
    'B','A','L','U','T','P','L','G', 1,0,0,0, 1,0,0,0, 4,0,0,0, 't','i','n','y',
    [84] = 3,0,0,0, '0','.','1',
};
__attribute__((visibility("default"))) void *_1as_0lib_1header_0root_bmodule_bloader = 0;
C
cc -shared -fPIC -Os -s -nostdlib -Wl,--hash-style=gnu -Wl,-z,noseparate-code -Wl,--build-id=none -Wl,-z,norelro -o plugin_file/tiny.so /tmp/balut-tiny-plugin.c
rm /tmp/balut-tiny-plugin.c
ls -l plugin_file/tiny.so
