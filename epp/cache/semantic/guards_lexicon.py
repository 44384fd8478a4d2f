"""Word lists for the false-hit guards (epp.cache.semantic.guards): names that change the answer when swapped.

Everything is lower case. Each list is a class: the guards compare the order of two entities only within a
class ("USD to EUR" vs "EUR to USD"), and capitalised words that are in no list count as class "name".
Multi-word names ("new york") are matched as phrases. ALIASES maps spellings onto one canonical name, so
"JS" and "JavaScript" are the same entity; a name may not be an alias of two things.
"""

from __future__ import annotations

import re


def words_of(text: str) -> frozenset[str]:
    """The words of `text` ("_" joins a phrase: "new_york")."""
    return frozenset(w.replace("_", " ") for w in text.split())


def _pairs(text: str) -> dict[str, str]:
    return dict(tuple(p.replace("_", " ").split("=")) for p in text.split())  # type: ignore[misc]


PLACES = words_of("""
    afghanistan albania algeria argentina armenia australia austria azerbaijan bahamas bahrain bangladesh
    belarus belgium bolivia bosnia brazil bulgaria cambodia cameroon canada chile china colombia croatia cuba
    cyprus czechia denmark ecuador egypt england estonia ethiopia finland france georgia germany ghana greece
    guatemala haiti honduras hungary iceland india indonesia iran iraq ireland israel italy jamaica japan
    jordan kazakhstan kenya kuwait laos latvia lebanon libya lithuania luxembourg madagascar malaysia mali
    malta mexico moldova monaco mongolia montenegro morocco mozambique myanmar nepal netherlands holland
    nicaragua niger nigeria norway oman pakistan panama paraguay peru philippines poland portugal qatar
    romania russia rwanda scotland senegal serbia singapore slovakia slovenia somalia spain sudan sweden
    switzerland syria taiwan tanzania thailand tunisia turkey uganda ukraine uruguay uzbekistan venezuela
    vietnam wales yemen zambia zimbabwe usa uk uae new_zealand south_africa south_korea north_korea
    saudi_arabia sri_lanka costa_rica puerto_rico hong_kong
    europe asia africa antarctica oceania north_america south_america latin_america middle_east scandinavia
    balkans caribbean siberia sahara amazon himalayas alps andes mediterranean atlantic pacific arctic
    alaska hawaii california texas florida ohio oregon nevada arizona colorado michigan virginia carolina
    bavaria catalonia ontario quebec tuscany provence kyoto
    london paris berlin madrid rome milan naples venice florence lisbon porto barcelona seville amsterdam
    brussels vienna prague budapest warsaw krakow dublin edinburgh glasgow manchester liverpool oslo
    stockholm copenhagen helsinki reykjavik athens istanbul ankara moscow kyiv kiev munich hamburg frankfurt
    zurich geneva lyon marseille nice tokyo osaka seoul busan beijing shanghai shenzhen taipei bangkok hanoi
    manila jakarta bali mumbai delhi bangalore chennai kolkata karachi lahore dubai doha riyadh tehran
    baghdad jerusalem cairo nairobi lagos johannesburg cape_town casablanca sydney melbourne brisbane perth
    auckland toronto vancouver montreal ottawa calgary chicago boston seattle miami atlanta denver dallas
    houston austin phoenix detroit philadelphia portland san_francisco los_angeles las_vegas new_york
    new_orleans san_diego washington mexico_city havana lima bogota santiago buenos_aires rio sao_paulo
    canberra carthage sparta troy babylon mecca
""")

NATURAL_LANGUAGES = words_of("""
    english french german spanish italian portuguese dutch swedish norwegian danish finnish icelandic polish
    czech slovak hungarian romanian bulgarian greek russian ukrainian turkish arabic hebrew persian farsi
    hindi urdu bengali punjabi tamil telugu thai vietnamese indonesian malay tagalog chinese mandarin
    cantonese japanese korean swahili latin esperanto american british european african asian roman
    ottoman byzantine victorian catholic protestant christian muslim islamic jewish buddhist hindu
    buddhism hinduism christianity islam judaism
""")

TECH = words_of("""
    python java javascript typescript ruby php perl rust golang kotlin swift scala haskell erlang elixir
    clojure lisp scheme fortran cobol pascal matlab julia lua dart bash zsh powershell sql nosql graphql
    c cpp csharp fsharp objective-c assembly wasm webassembly html css sass xml json yaml toml csv markdown
    latex pdf png jpg jpeg gif svg webp mp3 mp4 docx xlsx
    react angular vue svelte jquery django flask fastapi rails laravel nextjs nodejs deno
    numpy pandas scipy pytorch tensorflow keras sklearn matplotlib spark hadoop kafka airflow
    postgresql mysql sqlite mariadb mongodb redis cassandra elasticsearch dynamodb oracle snowflake
    docker kubernetes helm terraform ansible jenkins nginx apache envoy istio prometheus grafana
    git github gitlab bitbucket jira slack zoom figma photoshop excel powerpoint outlook notion
    linux ubuntu debian fedora centos arch windows macos mac ios android ipad iphone pixel chromebook
    chrome firefox safari opera
    aws azure gcp s3 ec2 lambda heroku vercel netlify cloudflare
    http https tcp udp ip ipv4 ipv6 dns ssh ssl tls ftp smtp rest grpc websocket oauth jwt vpn wifi
    bluetooth usb hdmi ssd hdd cpu gpu ram
    google microsoft apple amazon meta facebook instagram whatsapp tiktok twitter youtube netflix spotify
    uber airbnb tesla openai nvidia intel amd ibm samsung sony nintendo xbox playstation paypal venmo
    stripe shopify ikea walmart starbucks mcdonalds bitcoin ethereum
""")

UNITS = words_of("""
    usd eur gbp jpy cny inr chf cad aud krw mxn brl yuan rupee franc peso
    km kilometer mile meter cm mm foot inch yard kg gram pound ounce ton liter ml gallon cup tablespoon
    teaspoon pint quart celsius fahrenheit kelvin calorie kcal joule watt kwh volt mph kph
    gb mb kb tb byte ghz mhz pixel dpi fps hz acre hectare
    millisecond minute hour day week month year decade century
    percent
""")

THINGS = words_of("""
    dog cat puppy kitten horse cow pig sheep goat chicken duck goose turkey rabbit hamster mouse rat bird
    parrot fish goldfish shark whale dolphin octopus snake lizard turtle frog bee ant spider lion tiger
    bear wolf fox deer elephant giraffe zebra monkey gorilla panda penguin owl eagle crocodile alligator
    apple banana orange grape strawberry blueberry lemon lime mango pineapple peach pear cherry watermelon
    avocado tomato potato onion garlic carrot broccoli spinach lettuce cucumber pepper mushroom corn bean
    rice pasta bread quinoa oat wheat flour sugar salt honey chocolate coffee tea milk cheese butter egg
    yogurt beef pork lamb salmon tuna shrimp tofu peanut almond walnut cashew wine beer vodka whisky
    gold silver copper iron aluminum zinc nickel platinum mercury uranium carbon oxygen hydrogen
    nitrogen helium sodium potassium calcium magnesium sulfur chlorine lithium silicon
    sun moon earth mars venus jupiter saturn uranus neptune pluto
    mitochondria ribosome nucleus neuron dna rna protein enzyme insulin
    diabetes cancer asthma hypertension arthritis flu covid malaria migraine
    ibuprofen aspirin paracetamol acetaminophen penicillin
    christmas easter thanksgiving halloween hanukkah diwali ramadan
    mountain desert beach forest jungle rainforest lake river island valley glacier volcano canyon prairie
""")

# Programming languages (in TECH too, with their aliases): a text naming one is about code.
PROGRAMMING = words_of("""
    python java javascript typescript ruby php perl rust golang kotlin swift scala haskell erlang elixir
    clojure lisp fortran cobol pascal matlab julia lua dart bash zsh powershell sql c cpp csharp fsharp
    js ts py c++ c# f# objective-c
""")
# Code keywords and data types count as entities only in a text that names a programming language or
# looks like code: elsewhere they are ordinary words ("let me know", "list the planets").
CODE_WORDS = words_of("""
    let const var val def fn func lambda struct enum interface trait typedef async await yield null
    undefined nil string int float double boolean char list tuple dict array vector bytes datetime timestamp
""")

# spelling=canonical ("_" stands for a space)
ALIASES: dict[str, str] = _pairs("""
    united_states=usa united_states_of_america=usa america=usa u.s.=usa u.s.a.=usa united_kingdom=uk
    britain=uk great_britain=uk nyc=new_york czech_republic=czechia kiev=kyiv holland=netherlands
    js=javascript ts=typescript py=python c++=cpp c#=csharp f#=fsharp k8s=kubernetes postgres=postgresql
    psql=postgresql postgre=postgresql mongo=mongodb node=nodejs node.js=nodejs react.js=react
    reactjs=react vue.js=vue vuejs=vue next.js=nextjs osx=macos os_x=macos mac_os=macos
    scikit-learn=sklearn torch=pytorch tf=tensorflow google_cloud=gcp amazon_web_services=aws yml=yaml
    jpeg=jpg md=markdown gmail=google x.com=twitter btc=bitcoin eth=ethereum persian=farsi
    $=usd dollar=usd buck=usd €=eur euro=eur £=gbp sterling=gbp ¥=jpy yen=jpy renminbi=cny rmb=cny
    kilometre=km kms=km metre=meter centimeter=cm centimetre=cm millimeter=mm millimetre=mm feet=foot
    ft=foot kilogram=kg kilo=kg lb=pound lbs=pound oz=ounce tonne=ton litre=liter millilitre=ml
    milliliter=ml gal=gallon tbsp=tablespoon tsp=teaspoon °c=celsius centigrade=celsius °f=fahrenheit
    cal=calorie gigabyte=gb megabyte=mb kilobyte=kb terabyte=tb mins=minute hr=hour hrs=hour yr=year
    yrs=year %=percent percentage=percent per_cent=percent str=string dictionary=dict
    bool=boolean integer=int xmas=christmas covid-19=covid tylenol=acetaminophen advil=ibuprofen
""")
# Spellings that are an entity only as written: mid-sentence "Go" the language, "US" the country.
CASED_ALIASES: dict[str, str] = {"Go": "golang", "US": "usa", "LA": "los angeles", "SF": "san francisco"}

# Canonical name -> class; every alias target is one.
CLASS_OF: dict[str, str] = {
    **dict.fromkeys(PLACES, "place"),
    **dict.fromkeys(NATURAL_LANGUAGES, "lang"),
    **dict.fromkeys(TECH, "tech"),
    **dict.fromkeys(UNITS, "unit"),
    **dict.fromkeys(THINGS, "thing"),
    **dict.fromkeys(CODE_WORDS, "code"),
}
# Classes a capitalised word that is in no list ("name") is usually one of.
NAME_LIKE = frozenset({"place", "tech", "lang", "name"})


# -- the other guards' words ----------------------------------------------------------------------------
def _map(text: str) -> dict[str, str]:
    """ "a,b=c d" -> {"a": "c", "b": "c", "d": "d"}"""
    out: dict[str, str] = {}
    for item in text.split():
        names, _, value = item.partition("=")
        for name in names.split(","):
            out[name] = value or name
    return out


NEGATORS = words_of("""
    not no never nor none nothing neither nobody nowhere without except excluding cannot non nope
    dont doesnt didnt isnt arent wasnt werent cant wont wouldnt shouldnt couldnt havent hasnt hadnt aint
""")
NUMBER_WORDS = _map("""
    zero=0 two=2 three=3 four=4 five=5 six=6 seven=7 eight=8 nine=9 ten=10 eleven=11 twelve=12 thirteen=13
    fourteen=14 fifteen=15 sixteen=16 seventeen=17 eighteen=18 nineteen=19 twenty=20 thirty=30 forty=40
    fifty=50 sixty=60 seventy=70 eighty=80 ninety=90 hundred=100 thousand=1000 million=1000000
    billion=1000000000 trillion=1000000000000 dozen=12 half=0.5 twice=x2 thrice=x3
""")
_ORDINALS = """
    second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth
    fifteenth sixteenth seventeenth eighteenth nineteenth twentieth
"""
# "first" is not here: it is the "order" scope axis (first/last), as often a paraphrase of "earliest".
ORDINAL_WORDS: dict[str, int] = {
    **{w: i for i, w in enumerate(_ORDINALS.split(), start=2)},
    **{"thirtieth": 30, "fortieth": 40, "fiftieth": 50, "hundredth": 100},
}
DATE_WORDS = _map("""
    january,jan=january february,feb=february march,mar=march april,apr=april june,jun=june july,jul=july
    august,aug=august september,sep,sept=september october,oct=october november,nov=november
    december,dec=december monday,mondays,mon=monday tuesday,tuesdays,tue,tues=tuesday
    wednesday,wednesdays,wed=wednesday thursday,thursdays,thu,thur,thurs=thursday friday,fridays,fri=friday
    saturday,saturdays=saturday sunday,sundays=sunday today tomorrow yesterday tonight,tonite=tonight
    morning,mornings=morning afternoon,afternoons=afternoon evening,evenings=evening night,nights=night
    noon,midday=noon midnight weekend,weekends=weekend weekday,weekdays=weekday summer winter autumn eve
""")
MAY_CONTEXT = words_of(
    "in on of since until till by early late mid during from through this next last every end"
)
SEASON_CONTEXT = words_of("the in this next last every during early late until by")
RELATIVE_DATE = words_of("this next last previous past coming following")
RELATIVE_UNITS = words_of("""
    week weekend month year quarter season semester decade century night morning evening afternoon summer
    winter spring fall autumn monday tuesday wednesday thursday friday saturday sunday
""")
# Capitalised words that are not names.
STOP_CAPS = words_of("""
    i i'm i've i'd i'll ok okay hi hello hey thanks thank please pls plz mr mrs ms dr tl tldr eli5 asap
    fyi btw imo imho lol tia ps nb um uh so yes no oh dear
""")
SYMMETRIC = words_of("and or vs versus v with between compared nor plus")
QUESTION_PHRASES = _map("""
    when,what_time,what_year,what_date,which_year=when
    where,what_city,which_city,what_country,which_country=where who,whom,whose=who why,how_come=why
""")
QUESTION_PHRASES = {k.replace("_", " "): v for k, v in QUESTION_PHRASES.items()}
QUESTION_HOW = words_of("many much long old far big often tall fast deep large high heavy soon early late")


def _axes(text: str) -> tuple[tuple[str, bool, tuple[frozenset[str], ...]], ...]:
    """One axis per "name: pole | pole" line (continued on indented lines); "!name": strict."""
    axes: list[tuple[str, bool, tuple[frozenset[str], ...]]] = []
    for block in re.split(r"\n(?=\s*!?\w+:)", text.strip()):
        name, _, poles = block.partition(":")
        name = name.strip()
        axes.append((name.lstrip("!"), name.startswith("!"), tuple(words_of(p) for p in poles.split("|"))))
    return tuple(axes)


# Texts naming different poles of one axis ask different things. A both-sided axis tolerates a pole on one
# side only, as paraphrases drop or add such words ("the benefits of green tea" / "how is green tea good for
# you"); a strict one ("!") does not: "explain X" is not answered by "explain X in detail". "_" is a space.
SCOPE_AXES = _axes("""
    pros_cons: pro pros advantage advantages benefit benefits upside upsides strength strengths merit merits
        positives | con cons disadvantage disadvantages drawback drawbacks downside downsides weakness
        weaknesses risk risks danger dangers negatives limitations
    level: beginner beginners novice novices newbie newbies introductory intro basic basics simple_terms
        layman eli5 dummies | expert experts advanced experienced graduate phd professor seasoned technical
    !length: short shorter shorten brief briefly concise concisely succinct one_sentence one_line
        one_paragraph few_words nutshell tldr tl_dr | long longer lengthen detail detailed details in_depth
        thorough thoroughly comprehensive elaborate extensive exhaustive lengthy chapter_by_chapter
    extreme: min minimum minimal minimize smallest least lowest fewest shortest | max maximum maximal
        maximize largest biggest most highest greatest longest tallest
    order: first earliest initial beginning start | last latest final end recent newest ending
    amount: increase increasing raise raising boost more gain gaining grow | decrease decreasing reduce
        reducing lose losing less fewer cut shrink drop
    quality: best better | worst worse
    add_remove: add adding insert inserting append appending create include including | remove removing
        delete deleting drop dropping erase exclude excluding
    enable: enable enabling activate turn_on switch_on allow unblock | disable disabling deactivate turn_off
        switch_off block blocking
    encode: encrypt encrypting encryption encode encoding compress compressing compression serialize
        serialise zip | decrypt decrypting decryption decode decoding decompress decompressing decompression
        deserialize deserialise unzip
    upload: upload uploading uploads | download downloading downloads
    push_pull: push pushing | pull pulling
    send: send sending sent | receive receiving received
    import: import importing imports | export exporting exports
    trade: buy buying bought purchase purchasing | sell selling sold
    open_close: open opening opens start starting launch | close closing closes closed shut
    start_stop: start starting begin beginning resume | stop stopping quit halt pause end
    before_after: before prior | after afterwards
    bounds: above more_than greater_than higher_than at_least | below under less_than fewer_than lower_than
        at_most beneath
    timing: early earlier | late later
    side: left | right
    case: upper uppercase | lower lowercase
    temperature: hot hotter hottest warm warmer warmest heat heating | cold colder coldest cool cooler
        coolest cooling freezing
    speed: fast faster fastest quick quicker quickest quickly speed_up rapid | slow slower slowest slowly
        slow_down
    price: cheap cheaper cheapest inexpensive affordable budget low_cost | expensive pricey costly luxury
        luxurious premium
    difficulty: easy easier easiest simple simpler simplest | hard harder hardest difficult challenging tough
    register: formal formally | informal casual casually relaxed slang
    sentiment: positive favorable favourable glowing praise | negative unfavorable unfavourable critical
        harsh complaint
    sameness: similar similarity similarities alike in_common | different difference differences differ
        differs distinguish contrast
    causality: cause causes caused causing reason reasons | effect effects impact impacts consequence
        consequences
    sex: men man male males boy boys husband father dad | women woman female females girl girls wife mother
        mom
    age: kid kids child children toddler toddlers baby babies teen teens teenager teenagers young younger
        | adult adults grown_up elderly senior seniors old older oldest
    example: example examples sample instance demo | definition define defined meaning
    task: summarize summarise summary summarizing recap tldr tl_dr | translate translation translating
        | explain explanation describe description | rewrite rephrase reword paraphrase | proofread
        proofreading | test tests testing unit_test | document documentation docstring docstrings docs
        | review critique | analyze analyse analysis
    !stance: against oppose opposed opposing anti
    win_lose: win wins winning won victory | lose loses losing lost defeat
    love_hate: love loves like likes enjoy | hate hates dislike dislikes
    strength: strong stronger strongest | weak weaker weakest
    safety: safe safer safest safely | dangerous unsafe risky harmful toxic poisonous
    success: success successful succeed pass passing | failure fail failing failed
    io: input inputs | output outputs
    read_write: read reading | write writing
    client_server: client clients frontend front_end | server servers backend back_end
    sort: ascending | descending
    orientation: horizontal horizontally | vertical vertically
    north_south: north northern | south southern
    east_west: east eastern | west western
    inner_outer: inner inside internal interior | outer outside external exterior
    sync: sync synchronous synchronously | async asynchronous asynchronously
    truth: true truth | false untrue lie
    sunrise: sunrise rise rises | sunset
    arrive_depart: arrive arrival arrivals arriving | depart departure departures leave leaving
    accept_reject: accept accepted approve approved | reject rejected deny denied decline declined
    phase: evaporation evaporate evaporates evaporating vaporize | condensation condense condenses
        condensing
    melt_freeze: melt melts melting melted thaw thawing | freeze freezes freezing frozen
    in_out: import imports importing | export exports exporting
    inhale_exhale: inhale inhaling inhalation | exhale exhaling exhalation
    weight: heavy heavier heaviest | light lighter lightest
    size: big bigger large larger huge | small smaller little tiny
    frequency: common frequent frequently often usual usually typical typically popular | rare rarest
        rarely uncommon unusual seldom
    wet_dry: wet humid rainy | dry arid
    wealth: rich wealthy | poor poverty
    mood: happy happiness joy | sad sadness unhappy depressed
    time: past history historical ancient | future upcoming forecast prediction predictions
    form: poem poems poetry verse | song songs lyrics | story stories tale | essay essays | email emails
        | letter letters | tweet tweets | haiku | limerick | joke jokes | speech | slogan | recipe recipes
        | table | outline | script | quiz | report | blog_post | cover_letter | resume cv
""")
# Fixed expressions whose words are no pole ("side effects" asks nothing about effects vs causes).
NOT_SCOPE = words_of("""
    side_effect side_effects cold_brew first_aid first_name last_name high_school at_first at_last
    more_or_less in_case how_long as_long_as no_longer long_term long_time all_day_long day_long
    week_long month_long year_long hour_long in_short short_term
""")
