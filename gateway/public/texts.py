"""The public page's words, in English and Dutch: one dict per language, the same keys in both
(tests/gateway/test_public_texts.py holds them to that). `{...}` fields are filled in by site.py."""

from __future__ import annotations

EN: dict[str, str] = {
    "lang": "en",
    "other": "Nederlands",
    "title": "Air and noise in your street",
    "intro": ("Fine dust (PM2.5, PM10) and noise measured by the living lab's sensors, per location, beside the "
              "World Health Organization's guideline levels. Updated {generated}; times are {tz} local time."),
    "locations": "Locations",
    "position": "Position",
    "height": "sensor {h} m above the ground",
    "installed": "measuring since {d}",
    "no_position": "position not published",
    "now": "Last hour",
    "now_note": "the mean of the 60 minutes before the update, when measurements cover at least 45 of them",
    "now_none": "no current value",
    "now_last": "last data {t}",
    "pm25": "PM2.5",
    "pm10": "PM10",
    "noise": "Noise (LAeq)",
    "who_head": "Compared with the WHO guidelines",
    "indicator": "Indicator",
    "here": "Here",
    "who": "WHO guideline",
    "note": "Note",
    "pm25_day": "PM2.5, 24-hour mean ({d})",
    "pm10_day": "PM10, 24-hour mean ({d})",
    "pm25_long": "PM2.5, mean over {n} valid days",
    "pm10_long": "PM10, mean over {n} valid days",
    "lden_day": "Lden ({d})",
    "lnight_day": "Lnight ({d})",
    "lden_long": "Lden, over {n} valid days",
    "lnight_long": "Lnight, over {n} valid days",
    "who_24h": "{v} µg/m³ (24 hours)",
    "who_year": "{v} µg/m³ (year)",
    "who_noise": "{v} dB (road traffic, year)",
    "above": "above the guideline",
    "below": "at or below the guideline",
    "days_above": "{k} of {n} valid days above {v}",
    "indicative": "indicative: the guideline is for a year's mean",
    "no_valid_day": "no day with enough data yet",
    "plots": "The last 7 days, hourly means",
    "plot_pm": "Fine dust, µg/m³",
    "plot_noise": "Noise LAeq, dB(A)",
    "daily_head": "Daily values",
    "daily_note": "The newest {n} days; the downloads hold every day.",
    "date": "Date",
    "laeq24": "LAeq 24 h",
    "lday": "Lday",
    "levening": "Levening",
    "lnight": "Lnight",
    "lden": "Lden",
    "notes": "Notes",
    "too_little": "too little data",
    "flag_rh_high": "humid air: PM may read high ({p} of the time)",
    "flag_range": "beyond the sensor's rated range ({p})",
    "flag_floor": "quiet: near the microphone's own noise ({p})",
    "flag_overload": "very loud: the microphone overloaded ({p})",
    "flag_partial": "some samples missing ({p})",
    "no_data": "No data from this location yet.",
    "downloads": "Downloads",
    "dl_daily": "daily values",
    "dl_hourly": "hourly values, last 7 days",
    "about_head": "What is measured, and how well",
    "about": """
<h3>Fine dust</h3>
<p>PM2.5 and PM10 are the mass of airborne particles smaller than 2.5 and 10 micrometres, in micrograms per cubic
metre (µg/m³). They are counted by a low-cost optical sensor (laser light scattering) every minute. Such sensors
follow the changes well, but their absolute values can differ from an official reference station by about
±10 µg/m³ or ±10–15 %, whichever is larger. In humid air (relative humidity above 85 %) particles take up water
and the sensor reads too high: such minutes are flagged <em>humid air</em>, and the values are shown as measured,
not corrected. The WHO's 2021 air quality guidelines are 15 µg/m³ (PM2.5) and 45 µg/m³ (PM10) for a 24-hour mean
and 5 and 15 µg/m³ for the mean of a year; the 24-hour levels allow 3–4 days a year above them (their 99th
percentile).</p>
<h3>Noise</h3>
<p>The sensor computes the A-weighted equivalent sound level (LAeq, in dB(A)) of every minute itself; no sound is
recorded or sent. The measuring chain is accurate to a few hundredths of a decibel, but the MEMS microphone has a
tolerance of about ±1 dB and the node is not a type-approved sound level meter: read differences under 2–3 dB with
care. Minutes near the microphone's own noise are flagged <em>quiet</em> (the true level may be lower), minutes
in which it overloaded <em>very loud</em> (the level may read low).</p>
<p>Lday, Levening and Lnight are the energy means of the day (07–19), the evening (19–23) and the night (00–07 and
23–24) of a calendar day. Lden, the day-evening-night level of the EU Environmental Noise Directive, adds 5 dB to
the evening and 10 dB to the night: Lden = 10·log10((12·10^(Lday/10) + 4·10^((Levening+5)/10) +
8·10^((Lnight+10)/10)) / 24). On the two days the clock changes (last Sunday of March and of October) the day and
evening keep 12 and 4 hours and the night has what the clock gives (7 or 9 hours); the weights stay 12, 4 and 8. The
WHO's 2018 guidelines for road traffic noise are Lden 53 dB and Lnight 45 dB, as means over a year.</p>
<h3>Days, coverage and gaps</h3>
<p>A day is the calendar day in {tz} time. A daily value counts only when measurements cover at least 75 % of
it (18 of 24 hours); Lden needs 75 % of each of day, evening and night, Lnight 75 % of the night. Otherwise the
table says <em>too little data</em> (the coverage is in the downloads). The means over many days are the means of
the days that count (noise levels energetically); with fewer than a year of them they are an indication, not the
annual value the WHO compares with. Hourly means need 75 % of the hour; the plots leave the others out.</p>
""",
    "footer": "Measured by the living lab's sensors. Plots by uPlot (MIT licence).",
    "generated": "updated {t}",
}

NL: dict[str, str] = {
    "lang": "nl",
    "other": "English",
    "title": "Lucht en geluid in uw straat",
    "intro": ("Fijnstof (PM2.5, PM10) en geluid gemeten door de sensoren van het living lab, per locatie, naast de "
              "advieswaarden van de Wereldgezondheidsorganisatie (WHO). Bijgewerkt {generated}; tijden in "
              "{tz}-tijd."),
    "locations": "Locaties",
    "position": "Positie",
    "height": "sensor op {h} m hoogte",
    "installed": "meet sinds {d}",
    "no_position": "positie niet gepubliceerd",
    "now": "Afgelopen uur",
    "now_note": "het gemiddelde van de 60 minuten voor het bijwerken, als metingen er minstens 45 van dekken",
    "now_none": "geen actuele waarde",
    "now_last": "laatste meting {t}",
    "pm25": "PM2.5",
    "pm10": "PM10",
    "noise": "Geluid (LAeq)",
    "who_head": "Vergeleken met de WHO-advieswaarden",
    "indicator": "Maat",
    "here": "Hier",
    "who": "WHO-advieswaarde",
    "note": "Opmerking",
    "pm25_day": "PM2.5, 24-uursgemiddelde ({d})",
    "pm10_day": "PM10, 24-uursgemiddelde ({d})",
    "pm25_long": "PM2.5, gemiddelde over {n} geldige dagen",
    "pm10_long": "PM10, gemiddelde over {n} geldige dagen",
    "lden_day": "Lden ({d})",
    "lnight_day": "Lnight ({d})",
    "lden_long": "Lden, over {n} geldige dagen",
    "lnight_long": "Lnight, over {n} geldige dagen",
    "who_24h": "{v} µg/m³ (24 uur)",
    "who_year": "{v} µg/m³ (jaar)",
    "who_noise": "{v} dB (wegverkeer, jaar)",
    "above": "boven de advieswaarde",
    "below": "op of onder de advieswaarde",
    "days_above": "{k} van {n} geldige dagen boven {v}",
    "indicative": "indicatief: de advieswaarde geldt voor een jaargemiddelde",
    "no_valid_day": "nog geen dag met genoeg metingen",
    "plots": "De afgelopen 7 dagen, uurgemiddelden",
    "plot_pm": "Fijnstof, µg/m³",
    "plot_noise": "Geluid LAeq, dB(A)",
    "daily_head": "Dagwaarden",
    "daily_note": "De nieuwste {n} dagen; de downloads bevatten alle dagen.",
    "date": "Datum",
    "laeq24": "LAeq 24 uur",
    "lday": "Lday",
    "levening": "Levening",
    "lnight": "Lnight",
    "lden": "Lden",
    "notes": "Opmerkingen",
    "too_little": "te weinig metingen",
    "flag_rh_high": "vochtige lucht: PM mogelijk te hoog ({p} van de tijd)",
    "flag_range": "buiten het meetbereik van de sensor ({p})",
    "flag_floor": "stil: dicht bij de eigen ruis van de microfoon ({p})",
    "flag_overload": "zeer luid: de microfoon was overstuurd ({p})",
    "flag_partial": "enkele metingen ontbreken ({p})",
    "no_data": "Nog geen metingen van deze locatie.",
    "downloads": "Downloads",
    "dl_daily": "dagwaarden",
    "dl_hourly": "uurwaarden, afgelopen 7 dagen",
    "about_head": "Wat er gemeten wordt, en hoe nauwkeurig",
    "about": """
<h3>Fijnstof</h3>
<p>PM2.5 en PM10 zijn de massa van zwevende deeltjes kleiner dan 2,5 en 10 micrometer, in microgram per kubieke meter
(µg/m³). Een goedkope optische sensor (verstrooiing van laserlicht) telt ze elke minuut. Zulke sensoren volgen de
veranderingen goed, maar hun waarden kunnen ongeveer ±10 µg/m³ of ±10–15 % (het grootste van de twee) afwijken van
een officieel meetstation. In vochtige lucht (relatieve vochtigheid boven 85 %) nemen deeltjes water op en meet de
sensor te hoog: die minuten zijn gemarkeerd als <em>vochtige lucht</em>; de waarden staan er zoals gemeten, niet
gecorrigeerd. De WHO-advieswaarden van 2021 zijn 15 µg/m³ (PM2.5) en 45 µg/m³ (PM10) voor een 24-uursgemiddelde
en 5 en 15 µg/m³ voor een jaargemiddelde; de 24-uurswaarden laten 3–4 dagen per jaar daarboven toe (hun
99e percentiel).</p>
<h3>Geluid</h3>
<p>De sensor berekent zelf het A-gewogen equivalente geluidsniveau (LAeq, in dB(A)) van elke minuut; er wordt geen
geluid opgenomen of verstuurd. De rekenketen is tot op enkele honderdsten van een decibel nauwkeurig, maar de
MEMS-microfoon heeft een tolerantie van ongeveer ±1 dB en het meetpunt is geen typegekeurde geluidsmeter: lees
verschillen kleiner dan 2–3 dB met voorzichtigheid. Minuten dicht bij de eigen ruis van de microfoon zijn
gemarkeerd als <em>stil</em> (het werkelijke niveau kan lager zijn), minuten waarin hij overstuurd was als
<em>zeer luid</em> (het niveau kan te laag zijn).</p>
<p>Lday, Levening en Lnight zijn de energetische gemiddelden van de dag (07–19), de avond (19–23) en de nacht (00–07
en 23–24) van een kalenderdag. Lden, het dag-avond-nachtniveau van de Europese richtlijn omgevingslawaai, telt 5 dB
op bij de avond en 10 dB bij de nacht: Lden = 10·log10((12·10^(Lday/10) + 4·10^((Levening+5)/10) +
8·10^((Lnight+10)/10)) / 24). Op de twee dagen dat de klok verzet wordt (laatste zondag van maart en van oktober)
houden dag en avond 12 en 4 uur en heeft de nacht wat de klok geeft (7 of 9 uur); de gewichten blijven 12, 4 en 8.
De WHO-advieswaarden van 2018 voor wegverkeerslawaai zijn Lden 53 dB en Lnight 45 dB, als jaargemiddelden.</p>
<h3>Dagen, dekking en gaten</h3>
<p>Een dag is de kalenderdag in {tz}-tijd. Een dagwaarde telt alleen als de metingen minstens 75 % ervan
dekken (18 van de 24 uur); Lden vraagt 75 % van elk van dag, avond en nacht, Lnight 75 % van de nacht. Anders staat
er <em>te weinig metingen</em> (de dekking staat in de downloads). Gemiddelden over veel dagen zijn de gemiddelden
van de dagen die tellen (geluid energetisch); met minder dan een jaar aan dagen zijn ze een indicatie, niet de
jaarwaarde waarmee de WHO vergelijkt. Uurgemiddelden vragen 75 % van het uur; de grafieken laten de andere weg.</p>
""",
    "footer": "Gemeten door de sensoren van het living lab. Grafieken met uPlot (MIT-licentie).",
    "generated": "bijgewerkt {t}",
}

LANGUAGES = {"en": EN, "nl": NL}
#: the page of each language, beside each other in the site's folder
PAGES = {"en": "index.html", "nl": "nl.html"}
DAYS = {"en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"), "nl": ("ma", "di", "wo", "do", "vr", "za", "zo")}
MONTHS = {"en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
          "nl": ("jan", "feb", "mrt", "apr", "mei", "jun", "jul", "aug", "sep", "okt", "nov", "dec")}
DECIMAL = {"en": ".", "nl": ","}
