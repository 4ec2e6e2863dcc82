package main

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var palette = []color.Color{
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255}, // red: the peer
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255}, // blue: workersd
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 255}, // green: workersd, second view
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 255}, // orange: the peer, second view
}

type series struct {
	name   string
	pts    plotter.XYs
	color  int
	dashed bool
}

func addSeries(p *plot.Plot, ss []series, points bool) error {
	for _, s := range ss {
		l, err := plotter.NewLine(s.pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color = palette[s.color]
		l.Width = vg.Points(2)
		if s.dashed {
			l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(s.name, l)
		if points {
			sc, err := plotter.NewScatter(s.pts)
			if err != nil {
				return err
			}
			sc.Color = palette[s.color]
			sc.Shape = draw.CircleGlyph{}
			sc.Radius = vg.Points(3)
			p.Add(sc)
		}
	}
	return nil
}

// plotScrape draws the scrape cost against worker lifetimes, both axes
// logarithmic.
func plotScrape(r *ScrapeResult, file string) error {
	p := plot.New()
	p.Title.Text = "Scrape cost as worker lifetimes add up (same metrics per worker)"
	p.X.Label.Text = "worker lifetimes so far"
	p.Y.Label.Text = "ms per scrape (median)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker = fixedTicks(checkpointsOf(r))
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var py, one, all plotter.XYs
	for _, pt := range r.Points {
		x := float64(pt.Lifetimes)
		py = append(py, plotter.XY{X: x, Y: median(pt.PythonMs)})
		one = append(one, plotter.XY{X: x, Y: pt.OneMs})
		all = append(all, plotter.XY{X: x, Y: pt.AllMs})
	}
	live := 0
	if len(r.Points) > 0 {
		live = r.Points[0].Live
	}
	if err := addSeries(p, []series{
		{name: "Python prometheus_client multiprocess: one scrape of the aggregate", pts: py, color: 0},
		{name: "workersd: one worker's scrape (HTTP)", pts: one, color: 1},
		{name: fmt.Sprintf("workersd: all %d live workers, summed (Prometheus' total)", live), pts: all, color: 2, dashed: true},
	}, true); err != nil {
		return err
	}
	// Room above the highest curve for the legend, and a labelled decade
	// below the lowest.
	p.Y.Min, p.Y.Max = 0.5, 10000
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(10)
	p.Add(plotter.NewGrid())
	return p.Save(9*vg.Inch, 5.5*vg.Inch, file)
}

func checkpointsOf(r *ScrapeResult) []float64 {
	var xs []float64
	for _, p := range r.Points {
		xs = append(xs, float64(p.Lifetimes))
	}
	return xs
}

type fixedTicks []float64

func (t fixedTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for _, v := range t {
		if v >= min && v <= max {
			ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprintf("%g", v)})
		}
	}
	return ts
}

// plotCDF draws the registration-to-file latency CDFs, x logarithmic.
func plotCDF(r *AdapterResult, file string) error {
	p := plot.New()
	p.Title.Text = "Registration to file: etcd Put to a file_sd file holding the target"
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of registrations"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	var ss []series
	for i, ph := range r.Phases {
		ss = append(ss,
			series{name: "sdwriter, " + ph.Name, pts: cdf(ph.Sdwriter), color: 1 + i, dashed: i > 0},
			series{name: "custom-SD adapter, " + ph.Name, pts: cdf(ph.Adapter), color: 3 * (1 - i%2), dashed: i > 0},
		)
	}
	if err := addSeries(p, ss, false); err != nil {
		return err
	}
	// Between the sdwriter curves (left) and the adapter's (right).
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = 1.8 * vg.Inch
	p.Legend.YOffs = -1.5 * vg.Inch
	p.Add(plotter.NewGrid())
	return p.Save(9*vg.Inch, 5.5*vg.Inch, file)
}

// cdf of sorted values as a step line.
func cdf(sorted []float64) plotter.XYs {
	var xy plotter.XYs
	n := float64(len(sorted))
	for i, v := range sorted {
		v = math.Max(v, 0.01) // the log axis needs positive values
		xy = append(xy, plotter.XY{X: v, Y: float64(i) / n}, plotter.XY{X: v, Y: float64(i+1) / n})
	}
	return xy
}
