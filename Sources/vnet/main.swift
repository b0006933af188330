// The `vnet` executable: the process-wide backends (logging to stderr, Prometheus metrics), then the CLI.
// Everything else is in the VNetCLI library target.

import Logging
import Metrics
import Prometheus
import VNetCLI

CLIBootstrap.logging = { level in
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = level
        return h
    }
}
CLIBootstrap.metrics = {
    let registry = PrometheusCollectorRegistry()
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    return { registry.emitToBuffer() }
}
VNetMain.main()
