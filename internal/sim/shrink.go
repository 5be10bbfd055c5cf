package sim

import "time"

// Shrink reduces a failing schedule: it cuts the run short after the
// violation, then drops faults one at a time and replicas one at a time,
// keeping each cut that still breaks the same invariant, until no cut
// does. run runs a schedule (each in a bubble of its own) and reports
// what it found; tries bounds how many runs Shrink may make. The result is
// the smallest schedule found, with the violation it led to.
func Shrink(s Schedule, v Violation, run func(Schedule) Result, tries int) (Schedule, Violation) {
	fails := func(c Schedule) (Violation, bool) {
		if tries <= 0 {
			return Violation{}, false
		}
		tries--
		r := run(c)
		for _, x := range r.Violations {
			if x.Invariant == v.Invariant {
				return x, true
			}
		}
		return Violation{}, false
	}
	// Shorter: to a minute past the violation.
	if end := (v.At + time.Minute).Truncate(time.Minute) + time.Minute; end < s.Length {
		c := s
		c.Length = end
		c.Faults = nil
		for _, f := range s.Faults {
			if f.At < end {
				c.Faults = append(c.Faults, f)
			}
		}
		if x, ok := fails(c); ok {
			s, v = c, x
		}
	}
	for changed := true; changed && tries > 0; {
		changed = false
		// Fewer faults.
		for i := 0; i < len(s.Faults) && tries > 0; i++ {
			c := s
			c.Faults = append(append([]Fault(nil), s.Faults[:i]...), s.Faults[i+1:]...)
			if x, ok := fails(c); ok {
				s, v, changed = c, x, true
				i--
			}
		}
		// Fewer replicas.
		if s.Replicas > 1 {
			c := s
			c.Replicas--
			if x, ok := fails(c); ok {
				s, v, changed = c, x, true
			}
		}
		// Shorter again.
		if end := (v.At + time.Minute).Truncate(time.Minute) + time.Minute; end < s.Length {
			c := s
			c.Length = end
			if x, ok := fails(c); ok {
				s, v, changed = c, x, true
			}
		}
	}
	return s, v
}
