// Intentionally empty: the header declares a function libFuzzer (-sanitize=fuzzer) provides.
