"""Synthetic DocVQA: document-like pages with questions whose answers are printed on the page.

The pages (forms, invoices, letters, tables, bar charts) are drawn with PIL's bundled scalable
font, in grayscale ('L') or RGB, at several page sizes. Rows follow the exact schema of
``HuggingFaceM4/DocumentVQA`` so the training and evaluation code cannot tell the two apart:
one row per question, the page image repeated on each of its questions' rows.

Everything is a pure function of the seed: each page draws from its own
``random.Random`` seeded by (seed, split, page index), and images are stored as PNG bytes we
encode ourselves, so the same seed gives the same bytes, rows and ids.
"""

from __future__ import annotations

import functools
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import datasets
from PIL import Image, ImageDraw, ImageFont

# DocVQA's question-type vocabulary (we use a subset; see _KIND_BUILDERS).
QUESTION_TYPES: tuple[str, ...] = (
    "handwritten",
    "form",
    "table/list",
    "layout",
    "free_text",
    "Image/Photo",
    "figure/diagram",
    "Yes/No",
    "others",
)

# Letter and A4 at 72 dpi, letter at 96 dpi: small enough to generate fast, large enough to read.
DEFAULT_PAGE_SIZES: tuple[tuple[int, int], ...] = ((612, 792), (595, 842), (816, 1056))
PAGE_KINDS: tuple[str, ...] = ("form", "invoice", "letter", "table", "chart")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
MIN_PAGE_WIDTH = 300

# The layouts are designed on a 612 x 792 page and scaled by this reference.
_REFERENCE_SIZE = (612, 792)
# Joins the words of an answer inside running text so line wrapping never splits it.
_NO_BREAK = "\u00a0"


def docvqa_features() -> datasets.Features:
    """The features of HuggingFaceM4/DocumentVQA (all three splits share them)."""
    strings = datasets.Sequence(datasets.Value("string"))
    return datasets.Features(
        {
            "questionId": datasets.Value("int32"),
            "question": datasets.Value("string"),
            "question_types": strings,
            "image": datasets.Image(),
            "docId": datasets.Value("int32"),
            "ucsf_document_id": datasets.Value("string"),
            "ucsf_document_page_no": datasets.Value("string"),
            "answers": strings,
        }
    )


@dataclass(frozen=True)
class SyntheticQuestion:
    question: str
    answers: tuple[str, ...]  # first is the text as printed; others are accepted variants
    question_types: tuple[str, ...]


@dataclass(frozen=True)
class DrawnText:
    text: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in page pixels


@dataclass(frozen=True)
class SyntheticPage:
    kind: str
    image: Image.Image
    questions: tuple[SyntheticQuestion, ...]
    drawn_text: tuple[DrawnText, ...]  # every string drawn on the page, in drawing order


# ---------------------------------------------------------------------------------------------
# Vocabulary (invented names: no real people or companies).

_FIRST_NAMES = (
    "Helen", "Robert", "Maria", "James", "Linda", "Thomas", "Susan", "David", "Karen", "Paul",
    "Nancy", "George", "Carol", "Edward", "Ruth", "Frank", "Joyce", "Walter", "Alice", "Henry",
)
_LAST_NAMES = (
    "Park", "Whitman", "Alvarez", "Brennan", "Okafor", "Lindqvist", "Moreau", "Hastings",
    "Tanaka", "Fowler", "Greer", "Novak", "Castillo", "Pryor", "Dunmore", "Keane", "Sato",
    "Vance", "Holloway", "Reyes",
)
_HONORIFICS = ("Dr.", "Mr.", "Ms.")
_COMPANIES = (
    "Northgate Laboratories", "Harbor Point Foods", "Keller & Stone", "Bluefield Paper Co.",
    "Crestline Analytics", "Marlow Instruments", "Pine Hollow Farms", "Atlas Printing",
    "Redwood Chemical", "Summit Research Group", "Ironbridge Supply", "Lakeview Packaging",
)
_CITIES = (
    "Richmond, VA", "Louisville, KY", "Winston-Salem, NC", "Greensboro, NC", "Durham, NC",
    "Chicago, IL", "Atlanta, GA", "Columbus, OH", "Denver, CO", "Portland, OR",
)
_STREETS = ("Main Street", "Oak Avenue", "Industrial Parkway", "Market Street", "Elm Drive")
_DEPARTMENTS = (
    "Research", "Accounting", "Purchasing", "Marketing", "Quality Control", "Legal", "Personnel",
)
_JOB_TITLES = (
    "Vice President", "Research Director", "Project Manager", "Senior Chemist",
    "Controller", "Sales Manager", "Staff Attorney",
)
_ITEMS = (
    "Filter paper", "Glass vials", "Lab coats", "Printer toner", "Shipping cartons",
    "Sample bags", "Test tubes", "Binders", "Label stock", "Safety gloves", "Pipette tips",
    "Storage boxes",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_FORM_TITLES = (
    "REQUEST FOR PAYMENT", "EMPLOYEE INFORMATION FORM", "PURCHASE REQUISITION",
    "TRAVEL AUTHORIZATION", "PROJECT APPROVAL FORM",
)
_YES_NO_FIELDS = (
    ("Approved", "Is the request approved?"),
    ("Budgeted", "Is the expense budgeted?"),
    ("Urgent", "Is the request marked urgent?"),
    ("Confidential", "Is the document confidential?"),
)
_ROW_LABEL_SETS = (
    ("Region", ("Northeast", "Southeast", "Midwest", "Southwest", "West", "Central")),
    ("Product", ("Brand A", "Brand B", "Brand C", "Brand D", "Brand E", "Brand F")),
    ("Group", ("Control", "Group 1", "Group 2", "Group 3", "Group 4", "Group 5")),
)
_CHART_TOPICS = (
    ("Share of respondents by age", ("18-24", "25-34", "35-44", "45-54", "55+"), "%"),
    ("Shipments by quarter", ("Q1", "Q2", "Q3", "Q4"), ""),
    ("Awareness by channel", ("Print", "Radio", "Outdoor", "Direct mail", "Events"), "%"),
)
_FILLER_SENTENCES = (
    "Thank you for your letter regarding the program review.",
    "As discussed, the results will be summarized in the next quarterly report.",
    "We appreciate your continued cooperation on this matter.",
    "Copies of the relevant materials are enclosed for your files.",
    "Please let me know if any further information is required.",
    "The committee has reviewed the proposal in detail.",
    "Our staff will coordinate the remaining arrangements.",
)


# ---------------------------------------------------------------------------------------------
# Drawing.


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # PIL >= 10.1 bundles a scalable font (Aileron) behind load_default(size=...).
    return ImageFont.load_default(size=size)


class _Canvas:
    """A page being drawn; records every string and its box, so tests can check that the
    answers are on the page."""

    def __init__(self, size: tuple[int, int], mode: str, rng: random.Random):
        self.width, self.height = size
        self.mode = mode
        self.rng = rng
        self.scale = min(self.width / _REFERENCE_SIZE[0], self.height / _REFERENCE_SIZE[1])
        if mode == "RGB":
            paper = rng.choice(((255, 255, 255), (252, 250, 243), (248, 248, 244)))
            self.ink: int | tuple[int, int, int] = (20, 20, 24)
            self.accent: int | tuple[int, int, int] = rng.choice(
                ((28, 62, 130), (120, 30, 30), (20, 90, 60))
            )
            self.pen: int | tuple[int, int, int] = (25, 45, 150)  # blue ballpoint
        else:
            paper = rng.choice((255, 250, 244))
            self.ink, self.accent, self.pen = 0, 60, 40
        self.image = Image.new(mode, size, paper)
        self.draw = ImageDraw.Draw(self.image)
        self.drawn_text: list[DrawnText] = []
        self.margin = self.px(54)

    def px(self, reference_pixels: float) -> int:
        return max(1, round(reference_pixels * self.scale))

    def font(self, reference_size: float) -> ImageFont.FreeTypeFont:
        return _font(max(8, self.px(reference_size)))

    def text_width(self, text: str, reference_size: float) -> float:
        return self.font(reference_size).getlength(text)

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        reference_size: float = 11,
        *,
        fill=None,
        bold: bool = False,
        anchor: str = "la",
    ) -> None:
        text = text.replace(_NO_BREAK, " ")
        font = self.font(reference_size)
        fill = self.ink if fill is None else fill
        self.draw.text(xy, text, font=font, fill=fill, anchor=anchor)
        left, top, right, bottom = (round(v) for v in self.draw.textbbox(xy, text, font=font, anchor=anchor))
        if bold:
            # The bundled font has no bold face; a second pass one pixel over reads as bold
            # (a stroke would smear small sizes).
            self.draw.text((xy[0] + 1, xy[1]), text, font=font, fill=fill, anchor=anchor)
            right += 1
        self.drawn_text.append(DrawnText(text, (left, top, right, bottom)))

    def handwriting(self, xy: tuple[float, float], text: str, reference_size: float = 13) -> None:
        """Pen-coloured, slightly tilted text: the look of a filled-in field."""
        font = self.font(reference_size)
        left, top, right, bottom = font.getbbox(text)
        mask = Image.new("L", (right + 4, bottom + 4), 0)
        ImageDraw.Draw(mask).text((2, 2), text, font=font, fill=255)
        mask = mask.rotate(self.rng.uniform(-4.0, 4.0), resample=Image.BICUBIC, expand=True)
        x, y = round(xy[0]), round(xy[1])
        self.image.paste(self.pen, (x, y), mask)
        self.drawn_text.append(DrawnText(text, (x, y, x + mask.width, y + mask.height)))

    def line(self, x0: float, y0: float, x1: float, y1: float, width: float = 1, fill=None) -> None:
        self.draw.line((x0, y0, x1, y1), fill=self.ink if fill is None else fill, width=self.px(width))

    def box(self, x0: float, y0: float, x1: float, y1: float, *, fill=None, outline=None) -> None:
        self.draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline, width=self.px(1))

    def wrap(self, text: str, reference_size: float, max_width: float) -> list[str]:
        """Greedy word wrap; words joined by _NO_BREAK (answer spans) stay on one line."""
        lines: list[str] = []
        current = ""
        for word in text.split(" "):
            candidate = f"{current} {word}".strip()
            if current and self.text_width(candidate, reference_size) > max_width:
                lines.append(current)
                current = word
            else:
                current = candidate
        if current:
            lines.append(current)
        return lines

    def footer(self) -> None:
        # Real DocVQA pages carry a Bates number in a corner.
        bates = "".join(self.rng.choice("0123456789") for _ in range(10))
        self.text((self.width - self.margin, self.height - self.px(24)), bates, 8, anchor="rs")


# ---------------------------------------------------------------------------------------------
# Values and their answer variants.


def _person(rng: random.Random) -> tuple[str, tuple[str, ...]]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    if rng.random() < 0.5:
        printed = f"{rng.choice(_HONORIFICS)} {first} {last}"
        return printed, (printed, f"{first} {last}")
    return f"{first} {last}", (f"{first} {last}",)


def _date(rng: random.Random) -> str:
    return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1985, 2001)}"


def _money(cents: int) -> tuple[str, tuple[str, ...]]:
    number = f"{cents // 100:,}.{cents % 100:02d}"
    return f"${number}", (f"${number}", number)


def _count(value: int) -> tuple[str, ...]:
    printed = f"{value:,}"
    return (printed, printed.replace(",", "")) if "," in printed else (printed,)


def _phone(rng: random.Random) -> str:
    return f"({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}"


def _unbreakable(span: str) -> str:
    return span.replace(" ", _NO_BREAK)


def _question(text: str, answers: Sequence[str], *types: str) -> SyntheticQuestion:
    return SyntheticQuestion(text, tuple(dict.fromkeys(answers)), tuple(types))


# ---------------------------------------------------------------------------------------------
# Page kinds. Each draws one page and returns the questions it can answer.


def _draw_form(c: _Canvas) -> list[SyntheticQuestion]:
    rng = c.rng
    questions: list[SyntheticQuestion] = []
    title = rng.choice(_FORM_TITLES)
    c.text((c.width / 2, c.px(70)), title, 18, bold=True, anchor="mm")
    c.line(c.margin, c.px(88), c.width - c.margin, c.px(88), 2)
    company = rng.choice(_COMPANIES)
    c.text((c.width / 2, c.px(104)), company, 11, anchor="mm")

    person, person_answers = _person(rng)
    phone = _phone(rng)
    account = f"{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    fields = [
        ("Name", person, person_answers, "What is the name on the form?"),
        ("Department", rng.choice(_DEPARTMENTS), None, "Which department is listed on the form?"),
        ("Telephone", phone, None, "What is the telephone number on the form?"),
        ("Date", _date(rng), None, "What is the date on the form?"),
        ("Account No.", account, None, "What is the account number?"),
    ]
    amount_text, amount_answers = _money(rng.randint(5, 5000) * 100)
    fields.append(("Amount", amount_text, amount_answers, "What is the amount requested?"))
    rng.shuffle(fields)

    handwritten = rng.random() < 0.5
    label_x, value_x = c.margin, c.margin + c.px(150)
    y = c.px(140)
    step = c.px(40)
    for label, value, answers, question_text in fields:
        c.text((label_x, y), f"{label}:", 11, bold=True)
        c.line(value_x, y + c.px(16), c.width - c.margin, y + c.px(16), 1)
        if handwritten:
            c.handwriting((value_x + c.px(6), y - c.px(6)), value, 13)
            types = ("handwritten", "form")
        else:
            c.text((value_x + c.px(6), y), value, 11)
            types = ("form",)
        questions.append(_question(question_text, answers or (value,), *types))
        y += step

    y += c.px(10)
    for label, question_text in rng.sample(_YES_NO_FIELDS, 2):
        checked_yes = rng.random() < 0.5
        c.text((label_x, y), f"{label}:", 11, bold=True)
        for offset, option, checked in ((150, "Yes", checked_yes), (230, "No", not checked_yes)):
            x = c.margin + c.px(offset)
            size = c.px(11)
            c.box(x, y, x + size, y + size, outline=c.ink)
            if checked:
                c.line(x, y, x + size, y + size, 1.5, fill=c.pen if handwritten else c.ink)
                c.line(x, y + size, x + size, y, 1.5, fill=c.pen if handwritten else c.ink)
            c.text((x + size + c.px(6), y), option, 11)
        questions.append(_question(question_text, ("Yes" if checked_yes else "No",), "form", "Yes/No"))
        y += step

    y += c.px(20)
    c.text((label_x, y), "Comments:", 11, bold=True)
    for row in range(3):
        line_y = y + c.px(22) * (row + 1)
        c.line(label_x, line_y, c.width - c.margin, line_y, 0.5)
    c.footer()
    return questions


def _draw_invoice(c: _Canvas) -> list[SyntheticQuestion]:
    rng = c.rng
    questions: list[SyntheticQuestion] = []
    company = rng.choice(_COMPANIES)
    c.box(0, 0, c.width, c.px(8), fill=c.accent)
    c.text((c.margin, c.px(40)), company, 18, bold=True, fill=c.accent)
    address = f"{rng.randint(10, 9999)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}"
    c.text((c.margin, c.px(66)), address, 9)
    c.text((c.width - c.margin, c.px(40)), "INVOICE", 20, bold=True, anchor="ra")
    questions.append(_question("Which company issued the invoice?", (company,), "layout"))

    number = f"INV-{rng.randint(10000, 99999)}"
    date = _date(rng)
    customer = rng.choice([name for name in _COMPANIES if name != company])
    header = (("Invoice No.:", number), ("Date:", date), ("Bill To:", customer))
    y = c.px(110)
    for label, value in header:
        c.text((c.margin, y), label, 10, bold=True)
        c.text((c.margin + c.px(95), y), value, 10)
        y += c.px(18)
    questions += [
        _question("What is the invoice number?", (number, number.removeprefix("INV-")), "form"),
        _question("What is the invoice date?", (date,), "form"),
        _question("To whom is the invoice billed?", (customer,), "form"),
    ]

    columns = ("Description", "Qty", "Unit Price", "Amount")
    column_right_edges = (None, 330, 430, 558)  # reference x of right-aligned numeric columns
    y += c.px(20)
    c.box(c.margin, y, c.width - c.margin, y + c.px(20), fill=c.accent)
    paper = 255 if c.mode == "L" else (255, 255, 255)
    for name, right in zip(columns, column_right_edges):
        if right is None:
            c.text((c.margin + c.px(6), y + c.px(4)), name, 10, bold=True, fill=paper)
        else:
            c.text((c.px(right), y + c.px(4)), name, 10, bold=True, fill=paper, anchor="ra")
    y += c.px(26)
    total_cents = 0
    line_items = rng.sample(_ITEMS, rng.randint(3, 6))
    for item in line_items:
        quantity = rng.randint(1, 48)
        unit_cents = rng.randint(1, 400) * 25
        amount_cents = quantity * unit_cents
        total_cents += amount_cents
        unit_text, _ = _money(unit_cents)
        amount_text, amount_answers = _money(amount_cents)
        c.text((c.margin + c.px(6), y), item, 10)
        for value, right in zip((str(quantity), unit_text, amount_text), column_right_edges[1:]):
            c.text((c.px(right), y), value, 10, anchor="ra")
        c.line(c.margin, y + c.px(17), c.width - c.margin, y + c.px(17), 0.5)
        y += c.px(22)
        questions.append(
            rng.choice(
                (
                    _question(f"What is the quantity of {item.lower()}?", (str(quantity),), "table/list"),
                    _question(f"What is the amount for {item.lower()}?", amount_answers, "table/list"),
                )
            )
        )
    tax_cents = total_cents * rng.choice((0, 5, 6, 7)) // 100
    subtotal_text, _ = _money(total_cents)
    tax_text, _ = _money(tax_cents)
    grand_text, grand_answers = _money(total_cents + tax_cents)
    y += c.px(8)
    for label, value in (("Subtotal", subtotal_text), ("Tax", tax_text), ("Total Due", grand_text)):
        c.text((c.px(430), y), label, 10, bold=label == "Total Due", anchor="ra")
        c.text((c.px(558), y), value, 10, bold=label == "Total Due", anchor="ra")
        y += c.px(18)
    questions.append(_question("What is the total amount due?", grand_answers, "table/list", "form"))
    c.text((c.margin, c.height - c.px(60)), "Payment due within 30 days. Thank you for your business.", 9)
    c.footer()
    return questions


def _draw_letter(c: _Canvas) -> list[SyntheticQuestion]:
    rng = c.rng
    questions: list[SyntheticQuestion] = []
    company = rng.choice(_COMPANIES)
    city = rng.choice(_CITIES)
    letterhead = company.upper()
    c.text((c.width / 2, c.px(50)), letterhead, 16, bold=True, fill=c.accent, anchor="mm")
    c.text((c.width / 2, c.px(70)), f"{rng.randint(10, 9999)} {rng.choice(_STREETS)}  |  {city}", 9, anchor="mm")
    c.line(c.margin, c.px(82), c.width - c.margin, c.px(82), 1, fill=c.accent)
    questions.append(_question("What is the name of the company in the letterhead?", (letterhead,), "layout"))

    date = _date(rng)
    y = c.px(110)
    c.text((c.margin, y), date, 11)
    questions.append(_question("What is the date of the letter?", (date,), "layout"))

    recipient, recipient_answers = _person(rng)
    recipient_company = rng.choice([name for name in _COMPANIES if name != company])
    y += c.px(34)
    for line in (recipient, recipient_company, rng.choice(_CITIES)):
        c.text((c.margin, y), line, 11)
        y += c.px(16)
    questions.append(_question("To whom is the letter addressed?", recipient_answers, "layout"))

    y += c.px(18)
    honorific, *_, surname = recipient.split()
    c.text((c.margin, y), f"Dear {honorific} {surname}:" if honorific in _HONORIFICS else f"Dear {recipient}:", 11)

    room = f"Room {rng.randint(100, 950)}"
    deadline = _date(rng)
    budget_text, budget_answers = _money(rng.randint(5, 900) * 5000)
    facts = [
        (f"The review meeting will be held in {_unbreakable(room)}.",
         _question("Where will the review meeting be held?", (room, room.removeprefix("Room ")), "free_text")),
        (f"Please return the signed agreement by {_unbreakable(deadline)}.",
         _question("By when should the signed agreement be returned?", (deadline,), "free_text")),
        (f"The approved budget for the study is {budget_text}.",
         _question("What is the approved budget for the study?", budget_answers, "free_text")),
    ]
    chosen_facts = rng.sample(facts, 2)
    sentences = rng.sample(_FILLER_SENTENCES, 4)
    sentences[1:1] = [chosen_facts[0][0]]
    sentences[4:4] = [chosen_facts[1][0]]
    questions += [question for _, question in chosen_facts]
    paragraphs = (" ".join(sentences[:3]), " ".join(sentences[3:]))

    y += c.px(30)
    body_width = c.width - 2 * c.margin
    for paragraph in paragraphs:
        for line in c.wrap(paragraph, 11, body_width):
            c.text((c.margin, y), line, 11)
            y += c.px(16)
        y += c.px(12)

    sender, sender_answers = _person(rng)
    job_title = rng.choice(_JOB_TITLES)
    y += c.px(10)
    c.text((c.margin, y), "Sincerely,", 11)
    c.handwriting((c.margin, y + c.px(18)), sender, 15)
    y += c.px(50)
    c.text((c.margin, y), sender, 11)
    c.text((c.margin, y + c.px(16)), job_title, 11)
    questions += [
        _question("Who signed the letter?", sender_answers, "layout", "handwritten"),
        _question(f"What is the title of {sender}?", (job_title,), "layout"),
    ]
    c.footer()
    return questions


def _draw_table(c: _Canvas) -> list[SyntheticQuestion]:
    rng = c.rng
    questions: list[SyntheticQuestion] = []
    row_header, row_pool = rng.choice(_ROW_LABEL_SETS)
    rows = rng.sample(row_pool, rng.randint(4, 6))
    first_year = rng.randint(1988, 1998)
    years = [str(first_year + offset) for offset in range(3)]
    measure = rng.choice(("Sales", "Shipments", "Responses", "Units"))
    table_number = rng.randint(1, 12)
    title = f"Table {table_number}. {measure} by {row_header.lower()}, {years[0]}-{years[-1]}"
    c.text((c.margin, c.px(60)), title, 13, bold=True)
    c.text((c.margin, c.px(80)), f"Prepared by {rng.choice(_DEPARTMENTS)} Department", 9)

    values = {row: [rng.randint(40, 9000) for _ in years] for row in rows}
    left, right = c.margin, c.width - c.margin
    column_edges = [c.px(x) for x in (300, 400, 500)]
    y = c.px(110)
    c.line(left, y, right, y, 1.5)
    y += c.px(6)
    c.text((left + c.px(4), y), row_header, 10, bold=True)
    for year, edge in zip(years, column_edges):
        c.text((edge, y), year, 10, bold=True, anchor="ra")
    c.text((right, y), "Total", 10, bold=True, anchor="ra")
    y += c.px(20)
    c.line(left, y, right, y, 1)
    y += c.px(6)
    for index, row in enumerate(rows):
        if index % 2 == 1 and c.mode == "RGB":
            c.box(left, y - c.px(3), right, y + c.px(15), fill=(235, 240, 248))
        c.text((left + c.px(4), y), row, 10)
        for value, edge in zip(values[row], column_edges):
            c.text((edge, y), f"{value:,}", 10, anchor="ra")
        c.text((right, y), f"{sum(values[row]):,}", 10, anchor="ra")
        y += c.px(20)
    c.line(left, y, right, y, 1.5)
    c.text((left, y + c.px(10)), "Source: internal records.", 8)

    for row in rng.sample(rows, 2):
        column = rng.randrange(len(years))
        questions.append(
            _question(f"What is the value for {row} in {years[column]}?",
                      _count(values[row][column]), "table/list")
        )
    best = max(rows, key=lambda row: (sum(values[row]), row))
    questions.append(_question(f"Which {row_header.lower()} has the highest total?", (best,), "table/list"))
    questions.append(_question("What is the table number?", (str(table_number),), "layout"))
    c.footer()
    return questions


def _draw_chart(c: _Canvas) -> list[SyntheticQuestion]:
    rng = c.rng
    title, categories, unit = rng.choice(_CHART_TOPICS)
    values = [rng.randint(5, 95) for _ in categories]
    c.text((c.width / 2, c.px(60)), f"Figure {rng.randint(1, 9)}. {title}", 13, bold=True, anchor="mm")
    left, right = c.margin + c.px(20), c.width - c.margin
    base_y, top_y = c.px(420), c.px(110)
    c.line(left, top_y, left, base_y, 1)
    c.line(left, base_y, right, base_y, 1)
    slot = (right - left) / len(categories)
    bar_fill = c.accent
    for index, (category, value) in enumerate(zip(categories, values)):
        x0 = left + slot * index + slot * 0.2
        x1 = left + slot * (index + 1) - slot * 0.2
        bar_top = base_y - (base_y - top_y) * value / 100
        c.box(x0, bar_top, x1, base_y, fill=bar_fill)
        c.text(((x0 + x1) / 2, bar_top - c.px(4)), f"{value}{unit}", 10, anchor="md")
        c.text(((x0 + x1) / 2, base_y + c.px(8)), category, 10, anchor="ma")
    c.text((c.margin, c.px(470)), "Values are rounded to the nearest whole number.", 9)
    c.footer()
    questions = []
    for index in rng.sample(range(len(categories)), 2):
        printed = f"{values[index]}{unit}"
        questions.append(
            _question(f"What value is shown for {categories[index]}?",
                      (printed, str(values[index])), "figure/diagram")
        )
    best = max(range(len(categories)), key=lambda i: (values[i], -i))
    questions.append(_question("Which bar is the tallest?", (categories[best],), "figure/diagram"))
    return questions


_KIND_BUILDERS: dict[str, Callable[[_Canvas], list[SyntheticQuestion]]] = {
    "form": _draw_form,
    "invoice": _draw_invoice,
    "letter": _draw_letter,
    "table": _draw_table,
    "chart": _draw_chart,
}


# ---------------------------------------------------------------------------------------------
# Public API.


def _check_page_size(size: Sequence[int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < MIN_PAGE_WIDTH or height < width:
        raise ValueError(
            f"page size {width}x{height}: pages must be portrait (height >= width) and at least "
            f"{MIN_PAGE_WIDTH} px wide"
        )
    return width, height


def render_page(
    kind: str | None = None,
    *,
    seed: int | str = 0,
    page_size: Sequence[int] = _REFERENCE_SIZE,
    mode: str | None = None,
) -> SyntheticPage:
    """Draw one synthetic page and the questions it answers.

    ``kind`` (one of PAGE_KINDS) and ``mode`` ('L' or 'RGB') are drawn from the seed when None.
    """
    rng = random.Random(f"florence-patch-synthetic-page:{seed}")
    if kind is None:
        kind = rng.choice(PAGE_KINDS)
    if kind not in _KIND_BUILDERS:
        raise ValueError(f"unknown page kind {kind!r}; expected one of {', '.join(PAGE_KINDS)}")
    if mode is None:
        mode = rng.choice(("L", "RGB"))
    if mode not in ("L", "RGB"):
        raise ValueError(f"unknown page mode {mode!r}; expected 'L' or 'RGB'")
    canvas = _Canvas(_check_page_size(page_size), mode, rng)
    questions = _KIND_BUILDERS[kind](canvas)
    return SyntheticPage(kind, canvas.image, tuple(questions), tuple(canvas.drawn_text))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1: a third faster to encode than the default 6, for pages a quarter larger.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class _IdCounter:
    question_id: int = 1
    doc_id: int = 1
    used_ucsf_ids: set[str] = field(default_factory=set)


def _ucsf_id(rng: random.Random, used: set[str]) -> str:
    while True:
        letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))
        candidate = f"{letters}{rng.randint(0, 9999):04d}"
        if candidate not in used:
            used.add(candidate)
            return candidate


def _make_split(
    split: str,
    num_rows: int,
    *,
    seed: int,
    page_sizes: Sequence[tuple[int, int]],
    kinds: Sequence[str],
    max_questions_per_page: int,
    ids: _IdCounter,
) -> datasets.Dataset:
    columns: dict[str, list] = {name: [] for name in docvqa_features()}
    page_index = 0
    while len(columns["questionId"]) < num_rows:
        page_seed = f"{seed}:{split}:{page_index}"
        rng = random.Random(f"florence-patch-synthetic-doc:{page_seed}")
        page = render_page(rng.choice(kinds), seed=page_seed, page_size=rng.choice(page_sizes))
        image = {"bytes": _png_bytes(page.image), "path": None}
        ucsf_id = _ucsf_id(rng, ids.used_ucsf_ids)
        page_no = str(rng.randint(1, 4))
        remaining = num_rows - len(columns["questionId"])
        count = min(remaining, rng.randint(1, max_questions_per_page), len(page.questions))
        for question in rng.sample(page.questions, count):
            unannotated = split == "test"  # the real test split withholds answers and types
            columns["questionId"].append(ids.question_id)
            columns["question"].append(question.question)
            columns["question_types"].append([] if unannotated else list(question.question_types))
            columns["image"].append(image)
            columns["docId"].append(ids.doc_id)
            columns["ucsf_document_id"].append(ucsf_id)
            columns["ucsf_document_page_no"].append(page_no)
            columns["answers"].append([] if unannotated else list(question.answers))
            ids.question_id += 1
        ids.doc_id += 1
        page_index += 1
    return datasets.Dataset.from_dict(columns, features=docvqa_features(), split=split)


def make_docvqa(
    num_train: int = 64,
    num_validation: int = 16,
    num_test: int = 16,
    seed: int = 0,
    page_sizes: Sequence[Sequence[int]] = DEFAULT_PAGE_SIZES,
    *,
    kinds: Sequence[str] = PAGE_KINDS,
    max_questions_per_page: int = 3,
) -> datasets.DatasetDict:
    """A DocVQA-shaped DatasetDict with ``num_*`` rows (questions) per split.

    Each page gets 1..max_questions_per_page questions; questionId and docId count up from 1
    across train, validation, test in that order. Test rows have empty ``answers`` and
    ``question_types``, as in the real set.
    """
    sizes = tuple(_check_page_size(size) for size in page_sizes)
    if not sizes:
        raise ValueError("page_sizes is empty")
    unknown = sorted(set(kinds) - set(PAGE_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown or no page kinds {unknown}; expected some of {', '.join(PAGE_KINDS)}")
    if max_questions_per_page < 1:
        raise ValueError("max_questions_per_page must be at least 1")
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"num_{split} must be >= 0, got {count}")
    ids = _IdCounter()
    return datasets.DatasetDict(
        {
            split: _make_split(
                split,
                count,
                seed=seed,
                page_sizes=sizes,
                kinds=tuple(kinds),
                max_questions_per_page=max_questions_per_page,
                ids=ids,
            )
            for split, count in counts.items()
        }
    )


def save_docvqa(dataset_dict: datasets.DatasetDict, path: str | Path) -> Path:
    """Write ``dataset_dict`` with ``save_to_disk``; returns the directory."""
    path = Path(path)
    dataset_dict.save_to_disk(str(path))
    return path
