// Instant and Instant.Duration: the fake-clock arithmetic every timer relies on.

import Testing
import VNetBuffers

@Suite("Instant")
struct InstantTests {
    @Test("durations convert and compare")
    func durations() {
        #expect(Instant.Duration.seconds(3).nanoseconds == 3_000_000_000)
        #expect(Instant.Duration.milliseconds(1500).seconds == 1)
        #expect(Instant.Duration.milliseconds(999) < .seconds(1))
    }

    @Test("adding and subtracting instants; a difference never goes negative")
    func arithmetic() {
        let t = Instant(nanoseconds: 5_000_000_000)
        let later = t + .seconds(120)
        #expect(later - t == .seconds(120))
        #expect(t - later == Instant.Duration(nanoseconds: 0))
        #expect(t < later && Instant.zero < t)
    }
}
