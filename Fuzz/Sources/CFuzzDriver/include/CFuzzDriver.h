// libFuzzer's driver, for the fuzz targets' entry points. SwiftPM links every executable target with
// `main` aliased to `<Target>_main`, which would hide libFuzzer's own main; each target therefore defines
// `<Target>_main` and hands control to the driver (LLVMFuzzerRunDriver, libFuzzer's documented entry).
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
