package main

import (
	"fmt"
	"image/color"
	"math"
	"strconv"

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
	}
	shapes := map[string]draw.GlyphDrawer{
		kindTokenkeeper: draw.CircleGlyph{},
		kindStatic:      draw.SquareGlyph{},
		kindNaive:       draw.TriangleGlyph{},
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
