package kernel

import (
	"strings"
	"unicode"
)

// This file composes the picture the sketch kernel refines towards. Only
// integer arithmetic is used, so the same task gives the same pixels on every
// architecture (Go may fuse float multiply-adds differently on arm64 than on
// amd64). Maps are only looked up, never ranged over.

// rgb is a colour with 0..255 channels, kept wide for arithmetic.
type rgb struct{ r, g, b int32 }

// mix moves a towards b by t/256.
func mix(a, b rgb, t int32) rgb {
	return rgb{a.r + (b.r-a.r)*t/256, a.g + (b.g-a.g)*t/256, a.b + (b.b-a.b)*t/256}
}

// scale multiplies c by t/256.
func (c rgb) scale(t int32) rgb { return rgb{c.r * t / 256, c.g * t / 256, c.b * t / 256} }

// hsv converts hue 0..1535 (six sectors of 256), saturation and value
// 0..255.
func hsv(h, s, v int32) rgb {
	h %= 1536
	if h < 0 {
		h += 1536
	}
	sector, f := h/256, h%256
	p := v * (255 - s) / 255
	q := v * (255 - s*f/255) / 255
	t := v * (255 - s*(255-f)/255) / 255
	switch sector {
	case 0:
		return rgb{v, t, p}
	case 1:
		return rgb{q, v, p}
	case 2:
		return rgb{p, v, t}
	case 3:
		return rgb{p, q, v}
	case 4:
		return rgb{t, p, v}
	default:
		return rgb{v, p, q}
	}
}

// mix64 is the splitmix64 finaliser: a cheap, well-mixed 64-bit hash.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// rng is splitmix64: deterministic, seeded per element so adding a word does
// not move the elements of the others.
type rng struct{ s uint64 }

func newRNG(seed uint64) *rng { return &rng{s: mix64(seed ^ 0x5ca1ab1e)} }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	return mix64(r.s)
}

// intn returns 0..n-1 (n > 0).
func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }

// between returns lo..hi inclusive.
func (r *rng) between(lo, hi int) int {
	if hi <= lo {
		return lo
	}
	return lo + r.intn(hi-lo+1)
}

// permille returns lo..hi thousandths of n.
func (r *rng) permille(n, lo, hi int) int { return n * r.between(lo, hi) / 1000 }

func hashWord(s string) uint64 {
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// noise1 is 1-D value noise with smoothstep interpolation: 0..1023, lattice
// every cell pixels.
func noise1(seed uint64, x, cell int) int32 {
	if cell < 1 {
		cell = 1
	}
	i := x / cell
	if x < 0 && x%cell != 0 {
		i--
	}
	f := x - i*cell
	a := int64(mix64(seed+uint64(i)*0x9e3779b97f4a7c15) >> 54)
	b := int64(mix64(seed+uint64(i+1)*0x9e3779b97f4a7c15) >> 54)
	t := int64(f) * 1024 / int64(cell)
	t = t * t * (3072 - 2*t) >> 20
	return int32(a + (b-a)*t>>10)
}

// fbm sums octaves of noise1, each half the cell and half the weight of the
// last: 0..1023.
func fbm(seed uint64, x, cell, octaves int) int32 {
	var sum, norm int32
	w := int32(512)
	for o := 0; o < octaves && cell >= 1; o++ {
		sum += noise1(seed+uint64(o)*0x632be59bd9b4e019, x, cell) * w / 512
		norm += w
		w /= 2
		cell /= 2
	}
	return sum * 512 / norm
}

type timeOfDay int

const (
	todUnset timeOfDay = iota
	todDay
	todDawn
	todDusk
	todNight
)

type feature uint32

const (
	fWater feature = 1 << iota
	fSun
	fMoon
	fStars
	fClouds
	fMountains
	fForest
	fCity
	fBoats
	fHills
	fDesert
	fSnow
	fRain
	fAurora
	fFire
	fBeach
)

type theme struct {
	f   feature
	tod timeOfDay
	// neg is what the word removes from the picture when it is in the
	// negative prompt: "no boats" should not drain the harbour. Zero means
	// f.
	neg    feature
	accent rgb
	tint   bool // accent is set
}

// themes maps known words to scene features. Words not here (and not stop
// words) each add a hashed element instead.
var themes = map[string]theme{}

func init() {
	add := func(th theme, words ...string) {
		for _, w := range words {
			themes[w] = th
		}
	}
	add(theme{f: fWater | fCity | fBoats}, "harbour", "harbor", "port", "dock", "docks", "pier", "marina", "wharf")
	add(theme{f: fWater}, "sea", "ocean", "lake", "water", "river", "bay", "wave", "lagoon", "pond")
	add(theme{f: fWater | fBeach, neg: fBeach}, "beach", "shore", "coast", "seaside", "island", "tropical")
	add(theme{f: fWater | fBoats, neg: fBoats}, "boat", "ship", "sail", "sailboat", "yacht", "fishing", "ferry")
	add(theme{tod: todDusk}, "dusk", "sunset", "evening", "twilight", "golden")
	add(theme{tod: todDawn}, "dawn", "sunrise", "morning", "daybreak")
	add(theme{tod: todNight}, "night", "midnight", "dark", "nocturne", "nighttime")
	add(theme{f: fMoon, tod: todNight}, "moon", "moonlight", "moonlit", "lunar")
	add(theme{f: fStars, tod: todNight}, "star", "starry", "galaxy", "cosmos", "constellation", "milky")
	add(theme{f: fSun, tod: todDay}, "sun", "sunny", "day", "noon", "summer", "sunshine", "bright")
	add(theme{f: fClouds}, "cloud", "cloudy", "sky", "overcast", "breeze")
	add(theme{f: fMountains}, "mountain", "alps", "peak", "cliff", "ridge", "summit", "range", "rocky")
	add(theme{f: fMountains | fFire, tod: todDusk, neg: fFire}, "volcano", "lava", "fire", "flame", "burning", "inferno")
	add(theme{f: fForest}, "forest", "tree", "woods", "wood", "jungle", "pine", "grove", "woodland", "taiga")
	add(theme{f: fHills}, "hill", "meadow", "field", "valley", "grass", "countryside", "farm", "pasture", "green")
	add(theme{f: fCity}, "city", "town", "village", "skyline", "street", "tower", "castle", "building", "metropolis", "downtown", "cyberpunk")
	add(theme{f: fDesert}, "desert", "dune", "sand", "canyon", "sahara", "arid")
	add(theme{f: fSnow}, "snow", "winter", "ice", "frozen", "arctic", "glacier", "snowy", "frost")
	add(theme{f: fRain | fClouds, neg: fRain}, "rain", "storm", "stormy", "fog", "mist", "misty", "foggy", "thunder", "rainy", "gloomy")
	add(theme{f: fAurora, tod: todNight}, "aurora", "borealis", "northern")
	for _, c := range []struct {
		c     rgb
		words []string
	}{
		{rgb{220, 50, 50}, []string{"red", "crimson", "scarlet", "ruby"}},
		{rgb{245, 140, 40}, []string{"orange", "amber", "copper"}},
		{rgb{245, 215, 60}, []string{"yellow", "gold"}},
		{rgb{40, 180, 170}, []string{"teal", "cyan", "turquoise", "aqua"}},
		{rgb{50, 90, 220}, []string{"blue", "azure", "sapphire", "cobalt"}},
		{rgb{140, 70, 200}, []string{"purple", "violet", "lavender", "indigo"}},
		{rgb{240, 110, 170}, []string{"pink", "magenta", "rose"}},
		{rgb{235, 235, 240}, []string{"white", "silver", "pale"}},
		{rgb{110, 110, 115}, []string{"grey", "gray", "black"}},
		{rgb{130, 85, 50}, []string{"brown", "rust", "autumn"}},
		{rgb{60, 170, 80}, []string{"emerald", "lime", "verdant"}},
	} {
		for _, w := range c.words {
			th := themes[w]
			th.accent, th.tint = c.c, true
			themes[w] = th
		}
	}
}

var stopWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields("a an the of in on at and or with over under by to from for is are into near above below behind very some its it this that as beneath across through under between my our your their his her") {
		stopWords[w] = true
	}
}

// maxWordElements caps the hashed elements so a long prompt cannot make
// composition cost more than the refinement steps.
const maxWordElements = 12

// words splits s into lower-case words of letters and digits.
func words(s string) []string {
	return strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

// lookupTheme finds w, or w without a plural "s", in themes.
func lookupTheme(w string) (theme, bool) {
	if th, ok := themes[w]; ok {
		return th, true
	}
	if s, ok := strings.CutSuffix(w, "s"); ok && len(s) > 2 {
		th, ok := themes[s]
		return th, ok
	}
	return theme{}, false
}

// plan is what the prompt asks for, before any pixel is placed.
type plan struct {
	f       feature
	tod     timeOfDay
	accents []rgb
	elems   []uint64 // hashes of the words without a theme
}

// seedHours are the hours a seed picks from, in order of preference: day
// half the time, dusk a quarter, dawn and night an eighth each.
var seedHours = [8][4]timeOfDay{
	{todDay, todDusk, todDawn, todNight}, {todDay, todDusk, todDawn, todNight},
	{todDay, todDawn, todDusk, todNight}, {todDay, todNight, todDusk, todDawn},
	{todDusk, todDay, todDawn, todNight}, {todDusk, todDawn, todDay, todNight},
	{todDawn, todDusk, todDay, todNight}, {todNight, todDusk, todDay, todDawn},
}

func makePlan(prompt, negative string, seed uint64) plan {
	var p plan
	neg := map[string]bool{}
	var negF feature
	negTod := map[timeOfDay]bool{}
	negAccent := map[rgb]bool{}
	for _, w := range words(negative) {
		neg[w] = true
		if th, ok := lookupTheme(w); ok {
			if th.neg != 0 {
				negF |= th.neg
			} else {
				negF |= th.f
			}
			if th.f == 0 {
				// Only hour words rule out their hour: "no moon" is
				// still allowed to be night.
				negTod[th.tod] = true
			}
			if th.tint {
				negAccent[th.accent] = true
			}
		}
	}
	for _, w := range words(prompt) {
		if stopWords[w] || neg[w] {
			continue
		}
		th, ok := lookupTheme(w)
		if !ok {
			if len(p.elems) < maxWordElements {
				p.elems = append(p.elems, hashWord(w))
			}
			continue
		}
		p.f |= th.f
		if p.tod == todUnset && th.tod != todUnset {
			p.tod = th.tod
		}
		if th.tint && !negAccent[th.accent] && len(p.accents) < 4 {
			p.accents = append(p.accents, th.accent)
		}
	}
	r := newRNG(seed ^ 0x7ea)
	if negTod[p.tod] {
		p.tod = todUnset
	}
	if p.tod == todUnset {
		// The seed picks the hour the prompt leaves open, among those the
		// negative prompt allows; day when it rules them all out.
		p.tod = todDay
		for _, c := range seedHours[r.intn(len(seedHours))] {
			if !negTod[c] {
				p.tod = c
				break
			}
		}
	}
	switch p.tod {
	case todNight:
		p.f |= fMoon | fStars
	case todDusk, todDawn:
		p.f |= fSun
	case todDay:
		if r.intn(10) < 6 {
			p.f |= fSun
		}
		if r.intn(2) == 0 {
			p.f |= fClouds
		}
	}
	if p.f&(fWater|fHills|fForest|fDesert|fSnow|fCity|fMountains) == 0 {
		p.f |= fHills
	}
	p.f &^= negF
	return p
}

// What a word without a theme adds to the picture.
const (
	kindPlanet = iota
	kindHill
	kindStreak
	kindSparkles
	kindCloud
)

// wordKind picks the element a word's hash draws: planets and hills are the
// most common, being the most visible.
func wordKind(e uint64) int {
	return [8]int{kindPlanet, kindPlanet, kindHill, kindHill, kindStreak, kindSparkles, kindCloud, kindPlanet}[e>>61]
}

// canvas is an RGB image, 3 bytes a pixel.
type canvas struct {
	w, h int
	pix  []uint8
}

func newCanvas(w, h int) *canvas { return &canvas{w: w, h: h, pix: make([]uint8, 3*w*h)} }

func (c *canvas) at(x, y int) rgb {
	x = min(max(x, 0), c.w-1)
	y = min(max(y, 0), c.h-1)
	i := 3 * (y*c.w + x)
	return rgb{int32(c.pix[i]), int32(c.pix[i+1]), int32(c.pix[i+2])}
}

func clamp8(v int32) uint8 { return uint8(min(max(v, 0), 255)) }

// blend paints col over (x, y) at opacity a/256.
func (c *canvas) blend(x, y int, col rgb, a int32) {
	if x < 0 || y < 0 || x >= c.w || y >= c.h || a <= 0 {
		return
	}
	a = min(a, 256)
	i := 3 * (y*c.w + x)
	p := c.pix[i : i+3 : i+3]
	p[0] = clamp8(int32(p[0]) + (col.r-int32(p[0]))*a/256)
	p[1] = clamp8(int32(p[1]) + (col.g-int32(p[1]))*a/256)
	p[2] = clamp8(int32(p[2]) + (col.b-int32(p[2]))*a/256)
}

// add brightens (x, y) by col·a/256, saturating: light, not paint.
func (c *canvas) add(x, y int, col rgb, a int32) {
	if x < 0 || y < 0 || x >= c.w || y >= c.h || a <= 0 {
		return
	}
	i := 3 * (y*c.w + x)
	p := c.pix[i : i+3 : i+3]
	p[0] = clamp8(int32(p[0]) + col.r*a/256)
	p[1] = clamp8(int32(p[1]) + col.g*a/256)
	p[2] = clamp8(int32(p[2]) + col.b*a/256)
}

// scene holds the composition state shared by the painters.
type scene struct {
	*canvas
	p       plan
	seed    uint64
	m       int // the shorter side: sizes scale with it
	horizon int
	skyTop  rgb
	skyMid  rgb
	skyLow  rgb
	hazeCol rgb
}

// compose paints the picture for p at w×h.
func compose(p plan, w, h int, seed uint64) *canvas {
	s := &scene{canvas: newCanvas(w, h), p: p, seed: seed, m: min(w, h)}
	r := newRNG(seed ^ 0x5c3e)
	s.horizon = r.permille(h, 540, 660)
	s.paintSky(r)
	if p.f&fStars != 0 {
		s.paintStars(newRNG(seed ^ 0x57a5))
	}
	if p.f&fAurora != 0 {
		s.paintAurora(newRNG(seed ^ 0xa0a0))
	}
	for _, e := range p.elems {
		if wordKind(e) == kindStreak {
			s.paintStreak(e)
		}
	}
	if p.f&fSun != 0 {
		s.paintSun(newRNG(seed ^ 0x50))
	}
	if p.f&fMoon != 0 {
		s.paintMoon(newRNG(seed ^ 0x300))
	}
	for _, e := range p.elems {
		if wordKind(e) == kindPlanet {
			s.paintPlanet(e)
		}
	}
	if p.f&fClouds != 0 {
		cr := newRNG(seed ^ 0xc10d)
		n := cr.between(3, 6)
		if p.f&fRain != 0 {
			n = cr.between(8, 12)
		}
		for i := 0; i < n; i++ {
			s.paintCloud(cr, s.cloudColour(), s.horizon*3/4)
		}
	}
	for _, e := range p.elems {
		switch wordKind(e) {
		case kindCloud:
			s.paintCloud(newRNG(seed^e), mix(s.cloudColour(), s.wordColour(e), 110), s.horizon*2/3)
		case kindSparkles:
			s.paintSparkles(e)
		}
	}
	if p.f&fMountains != 0 {
		s.paintMountains(newRNG(seed ^ 0x307))
	}
	for _, e := range p.elems {
		if wordKind(e) == kindHill {
			s.paintWordHill(e)
		}
	}
	if p.f&fWater == 0 {
		s.paintPlain(newRNG(seed ^ 0x9a1))
	}
	if p.f&(fHills|fDesert|fSnow) != 0 {
		s.paintHills(newRNG(seed ^ 0x4111))
	}
	if p.f&fCity != 0 {
		s.paintCity(newRNG(seed ^ 0xc17))
	}
	if p.f&fForest != 0 {
		s.paintForest(newRNG(seed^0xf0), s.horizon-s.m/40, 420)
	}
	if p.f&fWater != 0 {
		s.paintWater(newRNG(seed ^ 0x3a7e))
		if p.f&fBoats != 0 {
			s.paintBoats(newRNG(seed ^ 0xb0a7))
		}
		if p.f&fBeach != 0 {
			s.paintBeach(newRNG(seed ^ 0xbea))
		}
	} else {
		s.paintGround(newRNG(seed ^ 0x6d))
		if p.f&fForest != 0 {
			s.paintForest(newRNG(seed^0xf1), s.horizon+(h-s.horizon)/3, 120)
		}
	}
	if p.f&fRain != 0 {
		s.paintRain(newRNG(seed ^ 0x7a1))
	}
	return s.canvas
}

func (s *scene) accent(i int) (rgb, bool) {
	if len(s.p.accents) == 0 {
		return rgb{}, false
	}
	return s.p.accents[i%len(s.p.accents)], true
}

func (s *scene) paintSky(r *rng) {
	switch s.p.tod {
	case todNight:
		s.skyTop, s.skyMid, s.skyLow = rgb{4, 6, 22}, rgb{12, 20, 52}, rgb{34, 46, 92}
	case todDusk:
		s.skyTop, s.skyMid, s.skyLow = rgb{38, 34, 96}, rgb{196, 92, 120}, rgb{252, 160, 74}
	case todDawn:
		s.skyTop, s.skyMid, s.skyLow = rgb{84, 112, 178}, rgb{226, 170, 176}, rgb{255, 214, 150}
	default:
		s.skyTop, s.skyMid, s.skyLow = rgb{46, 108, 196}, rgb{112, 164, 224}, rgb{196, 222, 240}
	}
	if s.p.f&fFire != 0 {
		s.skyMid, s.skyLow = mix(s.skyMid, rgb{200, 40, 20}, 150), mix(s.skyLow, rgb{255, 90, 20}, 160)
	}
	if s.p.f&fRain != 0 {
		grey := func(c rgb) rgb {
			l := (c.r + c.g + c.b) / 3
			return mix(c, rgb{l, l, l + 8}, 190).scale(200)
		}
		s.skyTop, s.skyMid, s.skyLow = grey(s.skyTop), grey(s.skyMid), grey(s.skyLow)
	}
	if s.p.f&fDesert != 0 {
		s.skyLow = mix(s.skyLow, rgb{250, 215, 160}, 120)
	}
	if a, ok := s.accent(0); ok {
		s.skyMid = mix(s.skyMid, a, 70)
		s.skyLow = mix(s.skyLow, a, 60)
	}
	// The seed shifts the hue of each stop a little.
	j := func(c rgb) rgb {
		return rgb{c.r + int32(r.between(-14, 14)), c.g + int32(r.between(-14, 14)), c.b + int32(r.between(-14, 14))}
	}
	s.skyTop, s.skyMid, s.skyLow = j(s.skyTop), j(s.skyMid), j(s.skyLow)
	s.hazeCol = s.skyLow
	midAt := int32(r.between(450, 650))
	for y := 0; y < s.h; y++ {
		t := int32(min(y, s.horizon) * 1000 / max(s.horizon, 1))
		var c rgb
		if t < midAt {
			c = mix(s.skyTop, s.skyMid, t*256/midAt)
		} else {
			c = mix(s.skyMid, s.skyLow, (t-midAt)*256/(1000-midAt))
		}
		row := s.pix[3*y*s.w : 3*(y+1)*s.w]
		for x := 0; x < s.w; x++ {
			row[3*x], row[3*x+1], row[3*x+2] = clamp8(c.r), clamp8(c.g), clamp8(c.b)
		}
	}
}

// light shades a land or water colour for the time of day and haze: depth
// 0 is nearest, 256 is lost in the haze at the horizon.
func (s *scene) light(c rgb, depth int32) rgb {
	switch s.p.tod {
	case todNight:
		c = mix(c.scale(70), rgb{10, 16, 40}, 90)
	case todDusk:
		c = mix(c.scale(150), s.skyMid, 60)
	case todDawn:
		c = mix(c.scale(210), s.skyMid, 40)
	}
	return mix(c, s.hazeCol, depth)
}

func (s *scene) wordColour(e uint64) rgb {
	c := hsv(int32(e>>8%1536), int32(130+e>>20%100), int32(180+e>>28%70))
	if a, ok := s.accent(int(e >> 40 % 4)); ok {
		c = mix(c, a, 100)
	}
	return c
}

func (s *scene) cloudColour() rgb {
	switch {
	case s.p.f&fRain != 0 && s.p.tod == todNight:
		return rgb{70, 72, 80}
	case s.p.f&fRain != 0:
		return rgb{150, 152, 162}
	case s.p.tod == todNight:
		return rgb{58, 64, 96}
	case s.p.tod == todDusk:
		return rgb{255, 176, 150}
	case s.p.tod == todDawn:
		return rgb{255, 222, 214}
	}
	return rgb{250, 251, 255}
}

// disc paints a filled, anti-aliased disc of radius rad with a glow of
// radius glow (0 for none).
func (s *scene) disc(cx, cy, rad, glow int, col, glowCol rgb, glowA int32, shade bool) {
	if glow > rad {
		g2 := glow * glow
		for y := max(cy-glow, 0); y <= min(cy+glow, s.h-1); y++ {
			for x := max(cx-glow, 0); x <= min(cx+glow, s.w-1); x++ {
				d2 := (x-cx)*(x-cx) + (y-cy)*(y-cy)
				if d2 >= g2 {
					continue
				}
				f := int32((g2 - d2) * 256 / g2)
				s.add(x, y, glowCol, f*f/256*glowA/256)
			}
		}
	}
	r2 := rad * rad
	for y := max(cy-rad-1, 0); y <= min(cy+rad+1, s.h-1); y++ {
		for x := max(cx-rad-1, 0); x <= min(cx+rad+1, s.w-1); x++ {
			d2 := (x-cx)*(x-cx) + (y-cy)*(y-cy)
			// r²−d² ≈ 2r·(r−d): distance inside the rim, for anti-aliasing.
			a := int32((r2 - d2) * 256 / max(2*rad, 1))
			if a <= 0 {
				continue
			}
			c := col
			if shade {
				// Lit from the upper left, like a sphere.
				l := int32(256 - ((x-cx)+(y-cy))*90/max(rad, 1))
				c = col.scale(min(max(l, 90), 300) * 256 / 300)
			}
			s.blend(x, y, c, a)
		}
	}
}

func (s *scene) paintSun(r *rng) {
	cx := r.permille(s.w, 150, 850)
	rad := r.permille(s.m, 55, 85)
	col, glowCol := rgb{255, 246, 214}, rgb{255, 236, 180}
	cy := r.permille(s.horizon, 150, 450)
	switch s.p.tod {
	case todDusk:
		rad = r.permille(s.m, 80, 120)
		col, glowCol = rgb{255, 150, 70}, rgb{255, 120, 60}
		cy = s.horizon - rad*r.between(20, 110)/100
	case todDawn:
		rad = r.permille(s.m, 75, 110)
		col, glowCol = rgb{255, 214, 150}, rgb{255, 190, 130}
		cy = s.horizon - rad*r.between(30, 130)/100
	}
	if s.p.f&fRain != 0 {
		// A pale disc behind the overcast.
		s.disc(cx, cy, rad, rad*3, mix(col, s.skyMid, 170), glowCol, 40, false)
		return
	}
	s.disc(cx, cy, rad, rad*4, col, glowCol, 150, false)
}

func (s *scene) paintMoon(r *rng) {
	cx := r.permille(s.w, 120, 880)
	cy := r.permille(s.horizon, 120, 420)
	rad := r.permille(s.m, 35, 55)
	s.disc(cx, cy, rad, rad*4, rgb{236, 234, 218}, rgb{90, 100, 140}, 80, false)
	// A few grey maria make it a moon rather than a white sun.
	for i := 0; i < 4; i++ {
		mx := cx + r.between(-rad/2, rad/2)
		my := cy + r.between(-rad/2, rad/2)
		s.disc(mx, my, max(rad/r.between(4, 7), 1), 0, rgb{196, 196, 186}, rgb{}, 0, false)
	}
}

func (s *scene) paintPlanet(e uint64) {
	r := newRNG(s.seed ^ e)
	rad := r.permille(s.m, 25, 70)
	cx := r.permille(s.w, 80, 920)
	cy := r.between(s.m*6/100, max(s.horizon-rad*2, s.m*6/100+1))
	c := s.wordColour(e)
	s.disc(cx, cy, rad, rad*3, c, c, 50, true)
}

func (s *scene) paintStars(r *rng) {
	n := s.w * s.horizon / 900
	a := int32(256)
	switch s.p.tod {
	case todDusk, todDawn:
		a = 110
	case todDay:
		a = 50
	}
	for i := 0; i < n; i++ {
		x, y := r.intn(s.w), r.intn(max(s.horizon, 1))
		b := int32(r.between(90, 255))
		// Fainter towards the bright horizon.
		b = b * int32(s.horizon-y/2) / int32(max(s.horizon, 1))
		c := rgb{b, b, min(b+20, 255)}
		s.blend(x, y, c, a)
		if r.intn(18) == 0 {
			for _, d := range [][2]int{{1, 0}, {-1, 0}, {0, 1}, {0, -1}} {
				s.blend(x+d[0], y+d[1], c, a*140/256)
			}
		}
	}
}

func (s *scene) paintSparkles(e uint64) {
	r := newRNG(s.seed ^ e)
	c := s.wordColour(e)
	cx, cy := r.permille(s.w, 100, 900), r.permille(s.horizon, 100, 800)
	spread := s.m / 6
	for i := r.between(14, 30); i > 0; i-- {
		x := cx + r.between(-spread, spread)
		y := cy + r.between(-spread/2, spread/2)
		arm := r.between(2, max(s.m/90, 3))
		s.blend(x, y, rgb{255, 255, 255}, 256)
		for k := 1; k <= arm; k++ {
			a := int32(256 - 256*k/(arm+1))
			s.add(x+k, y, c, a)
			s.add(x-k, y, c, a)
			s.add(x, y+k, c, a)
			s.add(x, y-k, c, a)
		}
	}
}

// paintStreak lays a soft horizontal band of colour across the sky, like a
// lit streak of cloud.
func (s *scene) paintStreak(e uint64) {
	r := newRNG(s.seed ^ e)
	c := mix(s.wordColour(e), s.skyLow, 70)
	y0 := r.permille(s.horizon, 150, 850)
	half := max(r.permille(s.m, 12, 30), 2)
	x0 := r.permille(s.w, 0, 400)
	x1 := x0 + r.permille(s.w, 400, 900)
	ns := s.seed ^ e ^ 0x5eed
	for x := max(x0, 0); x < min(x1, s.w); x++ {
		// Fade in and out over the band's first and last fifth.
		end := int32(min(x-x0, x1-x) * 256 * 5 / max(x1-x0, 1))
		end = min(end, 256)
		yc := y0 + int(noise1(ns, x, s.m/5)-512)*half*3/512
		th := half * int(256+noise1(ns^1, x, s.m/9)) / 768
		for y := max(yc-th, 0); y <= min(yc+th, s.h-1); y++ {
			d := y - yc
			if d < 0 {
				d = -d
			}
			a := int32((th-d)*220/max(th, 1)) * end / 256
			s.blend(x, y, c, a)
		}
	}
}

func (s *scene) paintAurora(r *rng) {
	cols := []rgb{{70, 255, 160}, {120, 120, 255}, {200, 90, 230}}
	for band := 0; band < 3; band++ {
		c := cols[r.intn(len(cols))]
		base := r.permille(s.horizon, 300, 650)
		height := r.permille(s.horizon, 150, 350)
		ns := r.next()
		for x := 0; x < s.w; x++ {
			yc := base + int(fbm(ns, x, s.w/3, 3)-512)*s.horizon/2400
			hh := height * int(300+fbm(ns^7, x, s.w/10, 2)) / 1324
			// Vertical rays: brightness flickers along x.
			ray := int32(128 + noise1(ns^9, x, 3)/8)
			for y := max(yc-hh, 0); y <= min(yc, s.h-1); y++ {
				a := int32((y-(yc-hh))*160/max(hh, 1)) * ray / 256
				s.add(x, y, c, a*s.skyDarkness()/256)
			}
		}
	}
}

// skyDarkness is 256 at night and less by day, for light that only shows
// against a dark sky.
func (s *scene) skyDarkness() int32 {
	switch s.p.tod {
	case todNight:
		return 256
	case todDusk, todDawn:
		return 140
	}
	return 60
}

func (s *scene) paintCloud(r *rng, c rgb, maxY int) {
	cx := r.permille(s.w, -50, 1050)
	cy := r.between(s.m/20, max(maxY, s.m/20+1))
	size := r.permille(s.m, 30, 70)
	if s.p.f&fRain != 0 {
		size = size * 3 / 2
	}
	shadow := mix(c, s.skyTop, 110).scale(220)
	for i := r.between(5, 9); i > 0; i-- {
		bx := cx + r.between(-size*2, size*2)
		by := cy + r.between(-size/2, size/3)
		rad := r.between(size/2, size)
		// An ellipse twice as wide as high, its outer third soft.
		rr := 4 * rad * rad
		for y := max(by-rad, 0); y <= min(by+rad, s.h-1); y++ {
			shade := int32((y - (by - rad)) * 120 / max(2*rad, 1))
			col := mix(c, shadow, shade)
			for x := max(bx-2*rad, 0); x <= min(bx+2*rad, s.w-1); x++ {
				d2 := (x-bx)*(x-bx) + 4*(y-by)*(y-by)
				if d2 >= rr {
					continue
				}
				a := int32((rr - d2) * 256 / (rr / 3))
				s.blend(x, y, col, min(a, 210))
			}
		}
	}
}

// fill paints each column from heights[x] down to the bottom, top colour
// fading to bottom colour.
func (s *scene) fill(heights []int, top, bottom rgb, texture uint64) {
	for x := 0; x < s.w; x++ {
		y0 := max(heights[x], 0)
		span := max(s.h-y0, 1)
		for y := y0; y < s.h; y++ {
			c := mix(top, bottom, int32((y-y0)*256/span))
			// Faint vertical grain, so land does not look flat-shaded.
			g := int32(mix64(texture+uint64(x)*31+uint64(y>>2)*0x9e37)>>60) - 8
			c = rgb{c.r + g, c.g + g, c.b + g}
			a := int32(256)
			if y == heights[x] {
				a = 160 // soften the ridge line a little
			}
			s.blend(x, y, c, a)
		}
	}
}

func (s *scene) paintMountains(r *rng) {
	rock := rgb{112, 116, 138}
	if s.p.f&fDesert != 0 {
		rock = rgb{176, 120, 86}
	}
	if s.p.f&fFire != 0 {
		rock = rgb{70, 50, 50}
	}
	snow := s.p.f&fSnow != 0 || r.intn(3) > 0
	for layer := 0; layer < 2; layer++ {
		ns := r.next()
		amp := r.permille(s.horizon, 320, 520) * (3 - layer) / 3
		base := s.horizon - layer*s.m/40
		// A range is a row of peaks, each a cone with its own slopes,
		// roughened by noise: the silhouette of the tallest wins.
		heights := make([]int, s.w)
		for x := range heights {
			heights[x] = base
		}
		for i := r.between(4, 8); i > 0; i-- {
			px := r.permille(s.w, -100, 1100)
			ph := r.between(amp/3, amp)
			left, right := r.between(50, 110), r.between(50, 110) // slope, %
			for x := range heights {
				var drop int
				if x < px {
					drop = (px - x) * left / 100
				} else {
					drop = (x - px) * right / 100
				}
				if y := base - ph + drop; y < heights[x] {
					heights[x] = y
				}
			}
		}
		if s.p.f&fFire != 0 && layer == 1 {
			// The volcano: the tallest cone, its top cut off by a crater.
			px, ph, crater := r.permille(s.w, 300, 700), amp*11/10, s.m/30
			for x := range heights {
				d := max(abs(x-px)-crater, 0)
				if y := base - ph + d*80/100; y < heights[x] {
					heights[x] = y
				}
			}
		}
		for x := range heights {
			heights[x] += int(fbm(ns, x, s.m/8, 4)-512) * amp / 6000
		}
		depth := int32(150 - layer*70)
		top := s.light(rock, depth)
		bottom := s.light(rock.scale(170), depth)
		s.fill(heights, top, bottom, ns)
		if snow {
			line := base - amp*62/100
			white := s.light(rgb{240, 244, 252}, depth)
			for x := 0; x < s.w; x++ {
				for y := max(heights[x], 0); y < line+int(noise1(ns^3, x, s.m/30)-512)*s.m/4000; y++ {
					s.blend(x, y, white, 220)
				}
			}
		}
		if s.p.f&fFire != 0 && layer == 1 {
			s.paintLava(heights, ns)
		}
	}
}

// paintLava runs glowing streams down from the highest point of heights.
func (s *scene) paintLava(heights []int, ns uint64) {
	px := 0
	for x := range heights {
		if heights[x] < heights[px] {
			px = x
		}
	}
	top := heights[px]
	s.disc(px, top, 0, s.m/5, rgb{}, rgb{255, 90, 20}, 140, false)
	for stream := -1; stream <= 1; stream++ {
		ls := ns ^ uint64(stream+11)
		for y := top; y < s.horizon; y++ {
			d := y - top
			// Down the cone's flank (its slope is 80%), wandering.
			x0 := px + stream*d*100/80*2/3 + int(fbm(ls, y, s.m/8, 3)-512)*d/1500
			w := 1 + d*s.m/(90*max(s.horizon-top, 1))
			for x := x0 - w; x <= x0+w; x++ {
				if y >= heights[min(max(x, 0), s.w-1)] {
					s.blend(x, y, rgb{255, 120, 30}, 220)
				}
			}
		}
	}
}

func (s *scene) paintWordHill(e uint64) {
	r := newRNG(s.seed ^ e)
	c := mix(s.wordColour(e), rgb{110, 120, 100}, 120)
	ns := r.next()
	amp := r.permille(s.horizon, 60, 200)
	base := s.horizon - r.permille(s.m, 0, 30)
	cell := s.w / r.between(1, 3)
	heights := make([]int, s.w)
	for x := range heights {
		heights[x] = base - int(fbm(ns, x, cell, 4))*amp/1024
	}
	s.fill(heights, s.light(c, 100), s.light(c.scale(150), 100), ns)
}

func (s *scene) landColour() rgb {
	switch {
	case s.p.f&fSnow != 0:
		return rgb{232, 238, 248}
	case s.p.f&fDesert != 0:
		return rgb{222, 180, 116}
	case s.p.f&fFire != 0:
		return rgb{60, 44, 40}
	}
	return rgb{96, 156, 72}
}

func (s *scene) paintHills(r *rng) {
	c := s.landColour()
	for layer := 0; layer < 2; layer++ {
		ns := r.next()
		amp := r.permille(s.horizon, 120, 260) * (2 - layer) / 2
		base := s.horizon + layer*s.m/30
		cell := s.w / r.between(1, 2)
		heights := make([]int, s.w)
		for x := range heights {
			heights[x] = base - int(fbm(ns, x, cell, 4))*amp/1024
		}
		lc := c.scale(int32(220 + layer*36))
		depth := int32(110 - layer*50)
		s.fill(heights, s.light(lc, depth), s.light(lc.scale(160), depth), ns)
	}
}

func (s *scene) paintCity(r *rng) {
	lit := s.p.tod == todNight || s.p.tod == todDusk
	base := s.horizon + 1
	for x := r.between(-s.m/20, 0); x < s.w; {
		bw := r.permille(s.m, 25, 60)
		bh := r.permille(s.m, 40, 180)
		top := base - bh
		body := s.light(hsv(int32(900+r.between(0, 200)), int32(r.between(20, 60)), int32(r.between(110, 170))), 60)
		for y := max(top, 0); y < base; y++ {
			for xx := x; xx < x+bw; xx++ {
				s.blend(xx, y, body, 256)
			}
		}
		win := max(bw/8, 1)
		for wy := top + win; wy+win < base; wy += 2 * win {
			for wx := x + win; wx+win <= x+bw-win; wx += 2 * win {
				var c rgb
				switch {
				case lit && r.intn(100) < 38:
					c = rgb{255, 214, 130}
				case lit:
					c = body.scale(160)
				default:
					c = mix(body, s.skyMid, 140)
				}
				for y := wy; y < wy+win; y++ {
					for xx := wx; xx < wx+win; xx++ {
						s.blend(xx, y, c, 230)
					}
				}
			}
		}
		x += bw + r.between(0, s.m/60)
	}
}

func (s *scene) paintForest(r *rng, base int, depth int32) {
	ns := r.next()
	heights := make([]int, s.w)
	for x := range heights {
		heights[x] = base - int(fbm(ns, x, s.w/2, 3))*s.m/40/1024
	}
	ground := append([]int(nil), heights...)
	tree := s.m / 22
	if depth < 200 {
		tree = s.m / 12
	}
	for cx := r.between(-tree, 0); cx < s.w+tree; cx += r.between(tree/4, tree/2) + 1 {
		th := r.between(tree*6/10, tree*14/10)
		hw := max(th/3, 2)
		gy := ground[min(max(cx, 0), s.w-1)]
		for x := max(cx-hw, 0); x <= min(cx+hw, s.w-1); x++ {
			d := cx - x
			if d < 0 {
				d = -d
			}
			// Jagged edges: a fir's boughs, not a smooth triangle.
			jag := int(mix64(ns+uint64(x))>>61) * th / 40
			if y := gy - th + th*d/hw + jag; y < heights[x] {
				heights[x] = y
			}
		}
	}
	c := rgb{38, 92, 52}
	if s.p.f&fSnow != 0 {
		c = rgb{60, 96, 90}
	}
	s.fill(heights, s.light(c, depth/2), s.light(c.scale(120), depth/2), ns)
}

// paintPlain lays low land at the horizon, so that without water nothing
// below the horizon shows sky.
func (s *scene) paintPlain(r *rng) {
	c := s.landColour()
	ns := r.next()
	heights := make([]int, s.w)
	for x := range heights {
		heights[x] = s.horizon - int(fbm(ns, x, s.w, 3))*s.m/60/1024
	}
	s.fill(heights, s.light(c.scale(200), 150), s.light(c.scale(180), 60), ns)
}

func (s *scene) paintGround(r *rng) {
	c := s.landColour()
	ns := r.next()
	base := s.horizon + (s.h-s.horizon)*r.between(25, 45)/100
	heights := make([]int, s.w)
	for x := range heights {
		heights[x] = base - int(fbm(ns, x, s.w, 3))*s.m/30/1024
	}
	s.fill(heights, s.light(c.scale(235), 0), s.light(c.scale(150), 0), ns)
}

// paintWater mirrors what lies above the horizon into the water below it,
// wobbled by ripples that grow towards the viewer, and tints it.
func (s *scene) paintWater(r *rng) {
	tint := rgb{38, 92, 150}
	switch {
	case s.p.tod == todNight:
		tint = rgb{8, 18, 44}
	case s.p.tod == todDusk:
		tint = rgb{64, 54, 108}
	case s.p.f&fRain != 0:
		tint = rgb{70, 82, 96}
	}
	if a, ok := s.accent(1); ok {
		tint = mix(tint, a, 50)
	}
	ns := r.next()
	span := max(s.h-s.horizon, 1)
	row := make([]rgb, s.w)
	for y := s.horizon; y < s.h; y++ {
		d := y - s.horizon
		ym := s.horizon - 1 - d*2/3
		amp := 1 + d*s.m/(span*30)
		off := int(noise1(ns, y, 2+d/20)-512) * amp / 512
		for x := 0; x < s.w; x++ {
			row[x] = s.at(x+off+int(noise1(ns^uint64(y), x, 6+d/6)-512)*amp/1024, ym)
		}
		wt := int32(90 + d*110/span)
		for x := 0; x < s.w; x++ {
			c := mix(row[x].scale(230), tint, wt)
			// Long, thin ripple highlights.
			if n := noise1(ns^0xffff^uint64(y*7919), x, 4+d/4); n > 880 {
				c = mix(c, s.skyLow, (n-880)*2)
			}
			i := 3 * (y*s.w + x)
			s.pix[i], s.pix[i+1], s.pix[i+2] = clamp8(c.r), clamp8(c.g), clamp8(c.b)
		}
	}
}

// paintBeach lays a strip of sand across the foreground, a line of surf
// along its edge.
func (s *scene) paintBeach(r *rng) {
	ns := r.next()
	base := s.h - r.permille(s.h-s.horizon, 250, 420)
	tilt := r.between(-1, 1) // the shore runs level or slants either way
	heights := make([]int, s.w)
	for x := range heights {
		heights[x] = base + int(fbm(ns, x, s.w/2, 4)-512)*s.m/5000 + (x-s.w/2)*tilt*s.m/(8*s.w)
	}
	sand := rgb{228, 204, 156}
	s.fill(heights, s.light(sand, 30), s.light(sand.scale(200), 0), ns)
	foam := s.light(rgb{250, 252, 255}, 20)
	for x := range heights {
		for k := 0; k < max(s.m/150, 2); k++ {
			s.blend(x, heights[x]-k, foam, int32(200-k*60))
		}
	}
}

func (s *scene) paintBoats(r *rng) {
	span := s.h - s.horizon
	for i := r.between(1, 4); i > 0; i-- {
		y := s.horizon + span*r.between(8, 55)/100
		size := s.m * (4 + 16*(y-s.horizon)/max(span, 1)) / 400
		size = max(size, 3)
		x := r.permille(s.w, 80, 920)
		hull := s.light(rgb{70, 46, 36}, 40)
		for dy := 0; dy < size/2; dy++ {
			w := size*2 - dy*2
			for dx := -w / 2; dx <= w/2; dx++ {
				s.blend(x+dx, y+dy, hull, 256)
			}
		}
		sail := s.light(rgb{240, 236, 222}, 20)
		if a, ok := s.accent(i); ok {
			sail = s.light(mix(sail, a, 120), 20)
		}
		mh := size * 2
		for dy := 0; dy < mh; dy++ {
			w := dy * size / mh
			for dx := 1; dx <= w; dx++ {
				s.blend(x+dx, y-mh+dy, sail, 240)
			}
			s.blend(x, y-mh+dy, hull, 256)
		}
	}
}

func (s *scene) paintRain(r *rng) {
	c := rgb{200, 204, 220}
	n := s.w * s.h / 350
	for i := 0; i < n; i++ {
		x, y := r.intn(s.w), r.intn(s.h)
		l := r.between(s.m/60+2, s.m/30+4)
		for k := 0; k < l; k++ {
			s.blend(x+k/4, y+k, c, 50)
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func abs32(v int32) int32 {
	if v < 0 {
		return -v
	}
	return v
}
