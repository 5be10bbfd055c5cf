package main

import (
	"fmt"
	"image/color"
	"math"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plotThroughput draws throughput against concurrency for the three
// handlers of figure 1 into a PNG at path.
func plotThroughput(r *readsResult, title, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "concurrent keep-alive connections (wrk -c)"
	p.Y.Label.Text = "requests per second"
	p.X.Scale = plot.LogScale{}
	var ticks []plot.Tick
	for _, c := range r.Conc {
		ticks = append(ticks, plot.Tick{Value: float64(c), Label: strconv.Itoa(c)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())

	colors := map[string]color.Color{
		kindTokenkeeper: color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		kindStatic:      color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		kindNaive:       color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
		kindDressed:     color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	}
	shapes := map[string]draw.GlyphDrawer{
		kindTokenkeeper: draw.CircleGlyph{},
		kindStatic:      draw.SquareGlyph{},
		kindNaive:       draw.TriangleGlyph{},
		kindDressed:     draw.PlusGlyph{},
	}
	ymax := 0.0
	for _, k := range kinds {
		pts := make(plotter.XYs, len(r.Conc))
		for i, c := range r.Conc {
			pts[i].X = float64(c)
			pts[i].Y = r.Cells[k][i].RPS
			ymax = max(ymax, pts[i].Y)
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		line.Color = colors[k]
		line.Width = vg.Points(2)
		if k == kindStatic {
			line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		points.Color = colors[k]
		points.Shape = shapes[k]
		points.Radius = vg.Points(3.5)
		p.Add(line, points)
		p.Legend.Add(kindLabel(k), line, points)
	}
	p.Y.Max = ymax * 1.15
	p.Y.Tick.Marker = rpsTicks{}
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// plainLogTicks are gonum's log-scale ticks labelled as plain numbers
// (10, 1,000) rather than in exponent form (1e+01).
type plainLogTicks struct{}

func (plainLogTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.LogTicks{}.Ticks(lo, hi)
	for i, t := range ts {
		switch {
		case t.Label == "":
		case t.Value < 1:
			ts[i].Label = strconv.FormatFloat(t.Value, 'g', -1, 64)
		default:
			ts[i].Label = fmtCount(int64(math.Round(t.Value)))
		}
	}
	return ts
}

// rpsTicks labels the y axis in thousands, five to eight labelled ticks.
type rpsTicks struct{}

func (rpsTicks) Ticks(lo, hi float64) []plot.Tick {
	step := 1.0
	for hi/step > 8 {
		switch s := step / math.Pow(10, math.Floor(math.Log10(step))); {
		case s < 1.5:
			step *= 2
		case s < 3:
			step *= 2.5
		default:
			step *= 2
		}
	}
	var ts []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprintf("%gk", v/1000)})
	}
	return ts
}

// scaleColors tell the catalog sizes of figure 11 apart.
var scaleColors = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// scaleByT groups figure 11's fleets that ran by catalog size, in order.
func scaleByT(rs []*scaleResult) ([]int, map[int][]*scaleResult) {
	byT := map[int][]*scaleResult{}
	var ts []int
	for _, r := range rs {
		if r.Skipped != "" {
			continue
		}
		if byT[r.T] == nil {
			ts = append(ts, r.T)
		}
		byT[r.T] = append(byT[r.T], r)
	}
	return ts, byT
}

// plotPropagation draws figure 11's propagation p99 (and max) against the
// number of replicas, one line per catalog size, into a PNG at path.
func plotPropagation(rs []*scaleResult, title, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "replicas (N)"
	p.Y.Label.Text = "ms from the leader serving a new token to each replica serving it"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plainLogTicks{}
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	ts, byT := scaleByT(rs)
	if len(ts) == 0 {
		return nil
	}
	for i, t := range ts {
		var p99, mx plotter.XYs
		for _, r := range byT[t] {
			p99 = append(p99, plotter.XY{X: float64(r.N), Y: float64(r.PropP99) / float64(time.Millisecond)})
			mx = append(mx, plotter.XY{X: float64(r.N), Y: float64(r.PropMax) / float64(time.Millisecond)})
		}
		c := scaleColors[i%len(scaleColors)]
		for _, s := range []struct {
			xy     plotter.XYs
			label  string
			dashed bool
		}{{p99, fmt.Sprintf("p99, T=%d", t), false}, {mx, fmt.Sprintf("max, T=%d", t), true}} {
			line, points, err := plotter.NewLinePoints(s.xy)
			if err != nil {
				return err
			}
			line.Color, points.Color = c, c
			line.Width = vg.Points(2)
			if s.dashed {
				line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
				line.Width = vg.Points(1)
			}
			points.Shape = draw.CircleGlyph{}
			points.Radius = vg.Points(3)
			p.Add(line, points)
			p.Legend.Add(s.label, line, points)
		}
	}
	target := plotter.NewFunction(func(float64) float64 { return 100 })
	target.Color = color.Gray{Y: 0x80}
	target.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(target)
	p.Legend.Add("target p99 at N=1000", target)
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// plotRedisLoad draws figure 11's Redis commands per second per replica
// at rest, as a follower (the leaders' work is stated apart), against
// N·T, log-log, into a PNG at path, with the bound (scaleBound).
func plotRedisLoad(rs []*scaleResult, title, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "replicas × tokens (N·T)"
	p.Y.Label.Text = "commands/s per follower (0 drawn at 0.001)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plainLogTicks{}, plainLogTicks{}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	ts, byT := scaleByT(rs)
	if len(ts) == 0 {
		return nil
	}
	lo, hi := math.Inf(1), 0.0
	for i, t := range ts {
		var xy plotter.XYs
		for _, r := range byT[t] {
			x := float64(r.N * r.T)
			xy = append(xy, plotter.XY{X: x, Y: max(r.FollowersPerReplica, 0.001)})
			lo, hi = min(lo, x), max(hi, x)
		}
		sc, err := plotter.NewScatter(xy)
		if err != nil {
			return err
		}
		sc.Color = scaleColors[i%len(scaleColors)]
		sc.Shape = draw.CircleGlyph{}
		sc.Radius = vg.Points(4)
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("T=%d", t), sc)
	}
	bound, err := plotter.NewLine(plotter.XYs{{X: lo, Y: scaleBound}, {X: hi, Y: scaleBound}})
	if err != nil {
		return err
	}
	bound.Color = color.Gray{Y: 0x80}
	bound.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(bound)
	p.Legend.Add(fmt.Sprintf("%g per replica (the bound)", scaleBound), bound)
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}
